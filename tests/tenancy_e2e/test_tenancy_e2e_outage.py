"""A Redis outage through real gateway processes: two replicas share a private redis-server (no
persistence), one configured ``fail_open`` and one ``fail_closed``; clients keep both busy while the
redis-server is killed (by its PID) and restarted empty on the same port.

fail_open: no request fails (the in-memory limiter serves, counted); fail_closed: requests get 503
``limiter_unavailable`` quickly; both: nothing hangs (every request's latency is bounded) and the
shared limits resume once Redis is back (two replicas enforce one limit again, in the new Redis)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backends.launchers.process import ProcessLauncher
from gateway.tenancy.keys import generate_key
from tests.support.redis_server import RedisServer
from tests.tenancy_e2e.helpers import MODEL, gateways, metric, scrape, unique_prefix

HANG_BOUND_S = 2.5  # any request, outage or not: far above the 0.25 s Redis timeout; reaching it is a hang
REFUSAL_BOUND_S = 1.0  # a fail_closed refusal during the outage
CLIENTS_PER_GATEWAY = 6
KILL_AT_S, RESTART_AFTER_S, RUN_S = 1.5, 2.0, 6.0


@dataclass(frozen=True)
class Outcome:
    gateway: str
    started: float  # monotonic
    latency: float
    status: int  # -1: no HTTP answer
    code: str


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def replica_config(engine: ProcessLauncher, server: RedisServer, prefix: str, mode: str,
                   keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "backends": [{"name": "engine", "kind": "vllm", "url": engine.url, "models": [MODEL]}],
        "tenancy": {"auth_enabled": True, "store": "redis", "redis_url": server.url, "redis_prefix": prefix,
                    "on_store_failure": mode, "store_retry_s": 0.5, "redis_timeout_s": 1.0, "keys": keys,
                    "tenants": [
                        {"name": "load", "limits": {"requests_per_minute": 1_000_000,
                                                    "tokens_per_minute": 50_000_000}},
                        {"name": "tight", "limits": {"requests_per_minute": 3}}]},
    }


async def client_loop(http: httpx.AsyncClient, name: str, url: str, key: str, until: float,
                      outcomes: list[Outcome]) -> None:
    body = {"model": MODEL, "prompt": "Keep going", "max_tokens": 4}
    while time.monotonic() < until:
        started = time.monotonic()
        status, code = -1, "no answer"
        try:
            response = await http.post(url + "/v1/completions", json=body, headers={"x-api-key": key},
                                       timeout=2 * HANG_BOUND_S)
            status = response.status_code
            code = "" if status == 200 else response.json()["error"]["code"]
        except httpx.HTTPError as error:
            code = type(error).__name__
        outcomes.append(Outcome(name, started, time.monotonic() - started, status, code))
        await asyncio.sleep(0.01)


async def drive(replicas: dict[str, str], key: str, server: RedisServer
                ) -> tuple[list[Outcome], float, float]:
    outcomes: list[Outcome] = []
    until = time.monotonic() + RUN_S
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as http:
        clients = [asyncio.ensure_future(client_loop(http, name, url, key, until, outcomes))
                   for name, url in replicas.items() for _ in range(CLIENTS_PER_GATEWAY)]
        await asyncio.sleep(KILL_AT_S)
        server.kill()
        killed = time.monotonic()
        await asyncio.sleep(RESTART_AFTER_S)
        await asyncio.to_thread(server.start)
        restarted = time.monotonic()
        await asyncio.gather(*clients)
    return outcomes, killed, restarted


def wait_store_up(url: str, key: str, timeout_s: float = 10.0) -> str:
    """Until the replica says Redis answers again (a request lets it probe); its metrics then."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(url)
        if metric(text, "gateway_ratelimit_store_up") == 1:
            return text
        assert time.monotonic() < deadline, "the replica never went back to Redis"
        httpx.post(url + "/v1/completions", headers={"x-api-key": key}, timeout=HANG_BOUND_S,
                   json={"model": MODEL, "prompt": "probe", "max_tokens": 1})
        time.sleep(0.2)


def summary(outcomes: list[Outcome], killed: float, restarted: float) -> dict[str, Any]:
    during = [o for o in outcomes if killed <= o.started + o.latency and o.started <= restarted]
    statuses: dict[int, int] = {}
    for outcome in outcomes:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    refusals = [o.latency for o in outcomes if o.status == 503]
    return {"requests": len(outcomes), "statuses": statuses,
            "max_latency_s": round(max(o.latency for o in outcomes), 3),
            "max_latency_during_outage_s": round(max((o.latency for o in during), default=0.0), 3),
            "p50_latency_during_outage_s": round(statistics.median([o.latency for o in during]), 4)
            if during else None,
            "max_503_latency_s": round(max(refusals), 3) if refusals else None}


def test_redis_killed_and_restarted_mid_load(engine: ProcessLauncher, private_redis: RedisServer,
                                             log_dir: Path) -> None:
    prefix = unique_prefix("outage")
    load, tight = generate_key(), generate_key()
    keys = [{"id": load.key_id, "hash": load.key_hash, "tenant": "load"},
            {"id": tight.key_id, "hash": tight.key_hash, "tenant": "tight"}]
    configs = {f"gw-{mode}": replica_config(engine, private_redis, prefix, mode, keys)
               for mode in ("fail_open", "fail_closed")}
    with gateways(configs, log_dir) as (open_gw, closed_gw):
        outcomes, killed, restarted = asyncio.run(
            drive({"fail_open": open_gw.url, "fail_closed": closed_gw.url}, load.key, private_redis))
        opened = [o for o in outcomes if o.gateway == "fail_open"]
        closed = [o for o in outcomes if o.gateway == "fail_closed"]
        figures = {name: summary(group, killed, restarted) for name, group in (("fail_open", opened),
                                                                              ("fail_closed", closed))}
        print(f"\nredis outage of {restarted - killed:.2f} s: {figures}")

        assert all(o.latency < HANG_BOUND_S for o in outcomes), "a request hung"
        assert all(o.status == 200 for o in opened), {o.code for o in opened if o.status != 200}
        assert {(o.status, o.code) for o in closed if o.status != 200} == {(503, "limiter_unavailable")}
        refusals = [o for o in closed if o.status == 503]
        assert refusals, "fail_closed served through the outage"
        assert all(o.latency < REFUSAL_BOUND_S for o in refusals)
        assert all(killed - 0.5 < o.started < restarted + 0.5 + 1.0 for o in refusals)
        assert all(o.status == 200 for o in closed if o.started < killed - 0.5 or o.started > restarted + 1.5)
        assert any(o.status == 200 for o in closed if o.started > restarted)  # limits resumed

        open_metrics = wait_store_up(open_gw.url, load.key)
        closed_metrics = wait_store_up(closed_gw.url, load.key)
        assert metric(open_metrics, "gateway_ratelimit_fallback_total", operation="admit") > 0
        assert metric(open_metrics, "gateway_ratelimit_store_incidents_total") >= 1
        unavailable = metric(closed_metrics, "gateway_ratelimit_decisions_total", outcome="unavailable")
        assert unavailable == len(refusals)
        assert metric(closed_metrics, "gateway_ratelimit_fallback_total") == 0

        # Shared limits resume in the new (empty) Redis: 3 requests a minute across both replicas.
        statuses = [httpx.post(url + "/v1/completions", headers={"x-api-key": tight.key},
                               json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                               timeout=HANG_BOUND_S).status_code
                    for url in (open_gw.url, closed_gw.url, open_gw.url, closed_gw.url)]
        assert statuses == [200, 200, 200, 429]
        client = redis.Redis.from_url(private_redis.url)
        try:
            assert client.exists(f"{prefix}rl:t:tight:rpm") == 1
        finally:
            client.close()
