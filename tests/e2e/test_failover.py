"""Failover, stream failures, timeouts and client disconnects through a real gateway in front of real
sim engine processes whose faults are injected through their admin endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.launchers.process import ProcessLauncher
from tests.e2e.conftest import MODEL, backend_entry
from tests.support.fleet import gateway_server, sim_engine

COMPLETION = {"model": MODEL, "prompt": "tell me", "max_tokens": 6, "ignore_eos": True}


@pytest.fixture
def pair(request: pytest.FixtureRequest,
         log_dir: Path) -> Iterator[tuple[ProcessLauncher, ProcessLauncher, str]]:
    """A vLLM-dialect and a TGI-dialect sim behind one round-robin gateway with short deadlines;
    non-stream requests go upstream whole unless the test parametrizes ``pair`` with "streamed"."""
    non_stream_upstream = getattr(request, "param", "whole")
    with sim_engine("vllm", MODEL, log_dir, name="fo-a") as a, sim_engine("tgi", MODEL, log_dir,
                                                                          name="fo-b") as b:
        config = {
            "backends": [backend_entry("a", "vllm", a.url), backend_entry("b", "tgi", b.url)],
            "timeouts": {"first_token_s": 1.0, "idle_s": 1.0, "whole_s": 2.0},
            "routing": {"default_policy": "round_robin"},
            "health": {"interval_s": 0.5, "failures_to_open": 2},
            "non_stream_upstream": non_stream_upstream,
        }
        with gateway_server(config, log_dir, name="gw-fo") as gateway:
            yield a, b, gateway.url


def set_fault(engine: ProcessLauncher, **fault: object) -> None:
    response = httpx.post(engine.url + "/sim/faults", json=fault, timeout=5)
    assert response.status_code == 200, response.text


def stats(url: str) -> dict[str, object]:
    data: dict[str, object] = httpx.get(url + "/stats", timeout=5).json()
    return data


@pytest.mark.parametrize("pair", ["whole", "streamed"], indirect=True)
@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 500}, {"status": 429},
                                   {"stall_before": 3.0}, {"drop_after": 0}])
def test_failures_before_first_token_are_invisible(pair: tuple[ProcessLauncher, ProcessLauncher, str],
                                                   fault: dict[str, object]) -> None:
    a, _, url = pair
    set_fault(a, **fault)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    for _ in range(4):
        out = client.completions.create(model=MODEL, prompt="tell me", max_tokens=6,
                                        extra_body={"ignore_eos": True})
        assert out.usage is not None and out.usage.completion_tokens == 6
        chunks = list(client.completions.create(model=MODEL, prompt="tell me", max_tokens=6, stream=True,
                                                extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    # Round robin sends the first request to the failing engine; the breaker may then skip it.
    assert failovers(url) >= 2


def failovers(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_failover_total{"))


def test_dead_engine_is_skipped_and_marked_unhealthy(pair: tuple[ProcessLauncher, ProcessLauncher, str]
                                                     ) -> None:
    a, _, url = pair
    a.stop()
    for _ in range(4):
        response = httpx.post(url + "/v1/completions", json=COMPLETION, timeout=10)
        assert response.status_code == 200
    deadline = time.monotonic() + 5
    while stats(url)["backends"]["a"]["healthy"]:  # type: ignore[index]
        assert time.monotonic() < deadline, "breaker never opened for the dead engine"
        time.sleep(0.2)
    assert httpx.get(url + "/ready", timeout=5).status_code == 200


def test_all_engines_failing_gives_503(pair: tuple[ProcessLauncher, ProcessLauncher, str]) -> None:
    a, b, url = pair
    set_fault(a, status=503)
    set_fault(b, status=503)
    response = httpx.post(url + "/v1/completions", json=COMPLETION, timeout=10)
    assert response.status_code in (502, 503)
    assert response.json()["error"]["type"] == "api_error"


def test_all_engines_stalling_gives_504(pair: tuple[ProcessLauncher, ProcessLauncher, str]) -> None:
    a, b, url = pair
    set_fault(a, stall_before=5.0)
    set_fault(b, stall_before=5.0)
    started = time.monotonic()
    response = httpx.post(url + "/v1/completions", json=COMPLETION, timeout=20)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 4.5  # two 1 s deadlines, not the engines' 5 s stalls


def test_engine_client_error_is_not_failed_over(pair: tuple[ProcessLauncher, ProcessLauncher, str]) -> None:
    _, _, url = pair
    response = httpx.post(url + "/v1/completions", timeout=10,
                          json={**COMPLETION, "prompt": "x " * 5000, "max_tokens": 4})
    assert response.status_code == 400
    failovers = httpx.get(url + "/metrics", timeout=5).text
    assert "gateway_failover_total{" not in failovers


@pytest.mark.parametrize("fault", [{"drop_after": 3}, {"error_after": 3}])
def test_stream_broken_after_first_token_ends_with_error_event(
        pair: tuple[ProcessLauncher, ProcessLauncher, str], fault: dict[str, object]) -> None:
    a, b, url = pair
    set_fault(a, **fault)
    set_fault(b, **fault)
    body = {**COMPLETION, "max_tokens": 10, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_stream_error"
    assert [json.loads(e)["choices"][0]["text"] for e in events[:-2]]  # tokens came before the error


@pytest.mark.parametrize("pair", ["whole", "streamed"], indirect=True)
def test_non_stream_broken_mid_generation_restarts_elsewhere(
        pair: tuple[ProcessLauncher, ProcessLauncher, str]) -> None:
    a, _, url = pair
    set_fault(a, drop_after=2)
    for _ in range(4):
        response = httpx.post(url + "/v1/completions", json=COMPLETION, timeout=10)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 6


def test_client_disconnect_releases_everything(pair: tuple[ProcessLauncher, ProcessLauncher, str]) -> None:
    a, b, url = pair
    set_fault(a, slow=0.2)
    set_fault(b, slow=0.2)
    for _ in range(2):
        with httpx.stream("POST", url + "/v1/completions", timeout=10,
                          json={**COMPLETION, "max_tokens": 200, "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk: the client disconnects
    deadline = time.monotonic() + 5
    while True:
        backends = stats(url)["backends"]
        in_flight = sum(v["in_flight"] for v in backends.values())  # type: ignore[attr-defined]
        engines_running = sum(_running(e) for e in (a, b))
        if in_flight == 0 and engines_running == 0:
            break
        assert time.monotonic() < deadline, f"in flight {in_flight}, engines running {engines_running}"
        time.sleep(0.2)


def _running(engine: ProcessLauncher) -> float:
    text = httpx.get(engine.url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("vllm:num_requests_running", "tgi_batch_current_size")):
            total += float(line.rsplit(" ", 1)[1])
    return total
