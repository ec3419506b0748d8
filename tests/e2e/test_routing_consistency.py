"""Two gateway processes with the same config route the same cold prefixes to the same backends with
no shared state (consistent hashing on the first prompt block), and a warm prefix stays on its
backend; decisions are counted by branch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from backends.launchers.process import ProcessLauncher
from tests.e2e.conftest import MODEL, backend_entry
from tests.support.fleet import gateway_server, sim_engine

BACKEND_HEADER = "x-llm-gateway-backend"


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    log_dir: Path = tmp_path_factory.mktemp("routing")
    with ExitStack() as stack:
        engines: list[ProcessLauncher] = [
            stack.enter_context(sim_engine("vllm", MODEL, log_dir, name=f"rt-{i}")) for i in range(4)]
        config = {"backends": [backend_entry(f"e{i}", "vllm", e.url) for i, e in enumerate(engines)],
                  "routing": {"default_policy": "prefix_affinity"}}
        a = stack.enter_context(gateway_server(config, log_dir, name="gw-rt-a"))
        b = stack.enter_context(gateway_server(config, log_dir, name="gw-rt-b"))
        yield a.url, b.url


def served_by(url: str, prompt: str, session: str | None = None) -> str:
    headers = {"x-session-id": session} if session else {}
    response = httpx.post(url + "/v1/completions", headers=headers, timeout=10,
                          json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
    assert response.status_code == 200, response.text
    return response.headers[BACKEND_HEADER]


def tenant_prompt(tenant: int, question: int) -> str:
    prefix = f"System prompt of tenant {tenant}: " + " ".join(f"rule{tenant}-{i}" for i in range(80))
    return f"{prefix}\nQuestion {question}: what now?"


def test_replicas_agree_on_cold_prefixes(two_gateways: tuple[str, str]) -> None:
    a, b = two_gateways
    prompts = [tenant_prompt(t, 0) for t in range(40)]
    on_a = [served_by(a, p) for p in prompts]
    on_b = [served_by(b, p) for p in prompts]
    assert on_a == on_b
    assert len(set(on_a)) >= 3, "cold prefixes should spread over the fleet"


def test_shared_prefix_sticks_to_its_backend(two_gateways: tuple[str, str]) -> None:
    a, _ = two_gateways
    first = served_by(a, tenant_prompt(99, 0))
    assert all(served_by(a, tenant_prompt(99, q)) == first for q in range(1, 8))
    metrics = httpx.get(a + "/metrics", timeout=5).text
    assert 'branch="hit"' in metrics and 'branch="cold"' in metrics


def test_session_key_routes_consistently(two_gateways: tuple[str, str]) -> None:
    a, b = two_gateways
    for session in ("alice", "bob", "carol", "dave"):
        chosen = served_by(a, f"turn one of {session}", session)
        assert served_by(b, f"an unrelated prompt for {session}", session) == chosen
    assert 'branch="key"' in httpx.get(a + "/metrics", timeout=5).text
