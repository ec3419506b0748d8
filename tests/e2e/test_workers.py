"""``llm-gateway serve --workers 2`` over real HTTP with real processes: both workers serve, /metrics
totals are the same whichever worker answers, a Redis limit is exact across workers, workers route
cold prefixes alike, SIGTERM (or SIGKILL) of the parent leaves no process behind, a killed worker is
replaced; and the configurations that cannot be exact with several workers are refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.launchers.process import ProcessLauncher
from gateway.cli import main
from gateway.settings import embedded_defaults, load_settings, parse_settings
from gateway.tenancy.keys import generate_key
from tests.e2e.conftest import MODEL, backend_entry
from tests.support.fleet import gateway_server, sim_engine
from tests.tenancy_e2e.helpers import SHARED_REDIS_URL, delete_prefix, shared_redis, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
WORKER_HEADER = "x-llm-gateway-worker"
BACKEND_HEADER = "x-llm-gateway-backend"
LIMIT = 20  # requests per minute of the capped tenant
TWO_WORKERS = ["--workers", "2"]


@dataclass
class Fleet:
    gateway: ProcessLauncher
    keys: dict[str, str]  # tenant -> API key


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    log_dir: Path = tmp_path_factory.mktemp("workers")
    prefix = unique_prefix("workers")
    free, capped = generate_key(), generate_key()
    tenancy = {
        "auth_enabled": True, "store": "redis", "redis_url": SHARED_REDIS_URL, "redis_prefix": prefix,
        "on_store_failure": "fail_closed", "redis_timeout_s": 2.0,
        "tenants": [{"name": "free"}, {"name": "capped", "limits": {"requests_per_minute": LIMIT}}],
        "keys": [{"id": free.key_id, "hash": free.key_hash, "tenant": "free"},
                 {"id": capped.key_id, "hash": capped.key_hash, "tenant": "capped"}],
    }
    client = shared_redis()
    try:
        with ExitStack() as stack:
            engines = [stack.enter_context(sim_engine("vllm", MODEL, log_dir, name=f"wk-{i}"))
                       for i in range(3)]
            config = {"backends": [backend_entry(f"e{i}", "vllm", e.url) for i, e in enumerate(engines)],
                      "routing": {"default_policy": "prefix_affinity"}, "tenancy": tenancy}
            gateway = stack.enter_context(gateway_server(config, log_dir, name="gw-workers",
                                                         extra_args=TWO_WORKERS))
            yield Fleet(gateway, {"free": free.key, "capped": capped.key})
    finally:
        delete_prefix(client, prefix)
        client.close()


def pinned(url: str, api_key: str | None = None, per_worker: int = 1, attempts: int = 80
           ) -> dict[int, list[httpx.Client]]:
    """Keep-alive connections sorted by the worker that accepted them: a connection stays with one
    worker, which makes "through worker i" deterministic."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    out: dict[int, list[httpx.Client]] = {0: [], 1: []}
    for _ in range(attempts):
        client = httpx.Client(base_url=url, headers=headers, timeout=10,
                              limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        worker = int(client.get("/health").headers[WORKER_HEADER])
        if len(out[worker]) < per_worker:
            out[worker].append(client)
        else:
            client.close()
        if all(len(clients) == per_worker for clients in out.values()):
            return out
    raise AssertionError(f"connections did not reach both workers: {({w: len(c) for w, c in out.items()})}")


def close_all(clients: dict[int, list[httpx.Client]]) -> None:
    for group in clients.values():
        for client in group:
            client.close()


def complete(client: httpx.Client, prompt: str) -> httpx.Response:
    return client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})


def requests_total(client: httpx.Client) -> tuple[int, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    total = sum(sample.value for family in text_string_to_metric_families(response.text)
                for sample in family.samples if sample.name == "gateway_requests_total")
    return int(response.headers[WORKER_HEADER]), total


def test_both_workers_serve(fleet: Fleet) -> None:
    clients = pinned(fleet.gateway.url, fleet.keys["free"])
    try:
        for worker, (client,) in clients.items():
            response = complete(client, f"hello from worker {worker}")
            assert response.status_code == 200, response.text
            assert response.headers[WORKER_HEADER] == str(worker)
    finally:
        close_all(clients)


def test_metrics_are_totals_whichever_worker_answers(fleet: Fleet) -> None:
    clients = pinned(fleet.gateway.url, fleet.keys["free"])
    try:
        before = dict(requests_total(c) for (c,) in clients.values())
        assert before[0] == before[1], f"the workers disagree before the run: {before}"
        k = 30
        for i in range(k):
            assert complete(clients[i % 2][0], f"metrics request {i}").status_code == 200
        after = dict(requests_total(c) for (c,) in clients.values())
        assert after == {0: before[0] + k, 1: before[0] + k}, (before, after)
        text = clients[1][0].get("/metrics").text
        assert 'gateway_backend_healthy{backend="e0",worker="0"} 1.0' in text
        assert 'gateway_backend_healthy{backend="e0",worker="1"} 1.0' in text
        assert 'gateway_backend_in_flight{backend="e0"}' in text  # summed over workers: no label
    finally:
        close_all(clients)


def test_limit_is_exact_across_workers(fleet: Fleet) -> None:
    clients = pinned(fleet.gateway.url, fleet.keys["capped"], per_worker=4)
    pool = [client for group in clients.values() for client in group]
    try:
        def send(i: int) -> tuple[int, str]:
            response = complete(pool[i % len(pool)], f"capped request {i}")
            return response.status_code, response.headers[WORKER_HEADER]

        with ThreadPoolExecutor(len(pool)) as executor:
            results = list(executor.map(send, range(LIMIT + 5)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200] * LIMIT + [429] * 5, statuses
        assert {worker for status, worker in results if status == 200} == {"0", "1"}
    finally:
        close_all(clients)


def test_workers_route_cold_prefixes_alike(fleet: Fleet) -> None:
    clients = pinned(fleet.gateway.url, fleet.keys["free"])
    try:
        chosen: list[str] = []
        for i in range(24):
            prompt = f"System prompt {i}: " + " ".join(f"rule{i}-{j}" for j in range(80)) + "\nQ: ok?"
            order = (0, 1) if i % 2 == 0 else (1, 0)  # each worker sees the prefix cold once
            backends = [complete(clients[w][0], prompt).headers[BACKEND_HEADER] for w in order]
            assert backends[0] == backends[1], f"prompt {i}: workers {order} chose {backends}"
            chosen.append(backends[0])
        assert len(set(chosen)) >= 2, "cold prefixes should spread over the fleet"
    finally:
        close_all(clients)


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` and their command lines, from /proc."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


def wait_for(condition: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def workers_of(gateway: ProcessLauncher) -> dict[int, int]:
    """Worker index -> pid."""
    assert gateway.process is not None
    return {int(cmd.split("--index ")[1].split()[0]): pid
            for pid, cmd in children(gateway.process.pid).items() if "gateway.workers" in cmd}


def test_killed_worker_is_replaced(fleet: Fleet) -> None:
    """Last of the fleet tests: it breaks the connections to worker 0."""
    clients = pinned(fleet.gateway.url, fleet.keys["free"])
    _, total = requests_total(clients[1][0])
    close_all(clients)
    old = workers_of(fleet.gateway)
    assert sorted(old) == [0, 1]
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: workers_of(fleet.gateway).get(0, old[0]) != old[0], 20, "a replacement for worker 0")
    assert workers_of(fleet.gateway)[1] == old[1]
    clients = pinned(fleet.gateway.url, fleet.keys["free"])  # both workers answer again
    try:
        assert complete(clients[0][0], "after the replacement").status_code == 200
        # the replacement continues its predecessor's counters: totals never go back
        assert requests_total(clients[0][0])[1] == total + 1
    finally:
        close_all(clients)
    assert fleet.gateway.log_path is not None
    assert re.search(rf"worker 0 \(pid {old[0]}\) exited with code -9", fleet.gateway.log_path.read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_parent_signal_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Embedded defaults (two launched sims, no limits) run with 2 workers; SIGTERM stops workers and
    sims gracefully and removes the metrics directory; after SIGKILL the children follow the parent."""
    with gateway_server(None, tmp_path, name="gw-embedded", extra_args=TWO_WORKERS) as gateway:
        assert gateway.process is not None
        kids = children(gateway.process.pid)
        workers = [pid for pid, cmd in kids.items() if "gateway.workers" in cmd]
        sims = [pid for pid, cmd in kids.items() if "backends.sim" in cmd]
        assert len(workers) == 2 and len(sims) == 2, kids
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
                           .split(b"=", 1)[1].decode())
        assert metrics_dir.is_dir()
        assert httpx.post(gateway.url + "/generate", json={"prompt": "hi", "max_tokens": 2},
                          timeout=10).status_code == 200
        started = time.monotonic()
        gateway.process.send_signal(sig)
        code = gateway.process.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in workers + sims), 15, "children gone")
        elapsed = time.monotonic() - started
    if sig == signal.SIGTERM:
        assert code == 0
        assert not metrics_dir.exists()
    else:
        shutil.rmtree(metrics_dir.parent, ignore_errors=True)  # nobody was left to remove it
    assert elapsed < 10, f"stopping took {elapsed:.1f} s"


def test_memory_limits_refuse_several_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "limited.yaml"
    config.write_text("backends:\n  - {name: a, kind: vllm, url: 'http://127.0.0.1:9', models: [m]}\n"
                      "tenancy:\n  tenants: [{name: default, limits: {requests_per_minute: 10}}]\n")
    assert main(["serve", "--config", str(config), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "tenancy.store: redis" in err and "tenancy.tenants[0].limits" in err
    config.write_text(config.read_text() + "server: {workers: 3}\n")
    assert main(["check-config", str(config)]) == 2
    assert "3 workers" in capsys.readouterr().err


def test_worker_spec_round_trips_the_settings() -> None:
    for settings in (embedded_defaults(), load_settings(ROOT / "compose" / "gateway.example.yaml")):
        assert parse_settings(settings.model_dump(mode="json")) == settings
