"""Speculative admission over real HTTP: two gateway replicas share a tight requests-per-minute bucket
in Redis in front of one slow sim engine (each request decodes for about a second). A replica that
last saw room starts the engine request while Redis decides; when the other replica has meanwhile
taken the room, the client still gets the 429, the engine request is cancelled (it never finishes
generating), and the next over-limit request is refused without touching the engine. And when Redis
stalls (a paused private redis-server) after a speculative stream has already opened on a fast engine,
the fail_closed refusal closes that stream: nothing stays in flight, nothing reaches the client."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from gateway.tenancy.keys import generate_key
from tests.support.fleet import sim_engine
from tests.support.redis_server import RedisServer
from tests.tenancy_e2e.helpers import (
    MODEL,
    SHARED_REDIS_URL,
    delete_prefix,
    gateways,
    metric,
    scrape,
    shared_redis,
    unique_prefix,
)

LONG = 150  # tokens: well over a second of decoding on the vllm-cpu profile


def complete(url: str, key: str, max_tokens: int, *, stream: bool = False) -> int:
    body = {"model": MODEL, "prompt": "speculate", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": stream}
    response = httpx.post(url + "/v1/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {key}"})
    return response.status_code


def finished(engine_url: str, reason: str) -> float:
    return metric(scrape(engine_url), "vllm:request_success_total", finished_reason=reason)


def test_a_speculative_refusal_cancels_the_engine_request(log_dir: Path) -> None:
    prefix = unique_prefix("speculation")
    key = generate_key()
    client = shared_redis()
    with sim_engine("vllm", MODEL, log_dir, name="spec-engine", args=["--profile", "vllm-cpu"]) as engine:
        config = {
            "backends": [{"name": "engine", "kind": "vllm", "url": engine.url, "models": [MODEL]}],
            "tenancy": {"auth_enabled": True, "store": "redis", "redis_url": SHARED_REDIS_URL,
                        "redis_prefix": prefix, "redis_timeout_s": 1.0,
                        "tenants": [{"name": "spec", "limits": {"requests_per_minute": 4}}],
                        "keys": [{"id": key.key_id, "hash": key.key_hash, "tenant": "spec"}]},
        }
        try:
            with gateways({"spec-a": config, "spec-b": config}, log_dir) as (a, b):
                assert complete(a.url, key.key, 4) == 200  # A learns: 3 left
                # B takes the other 3, speculating on its second and third (one streamed).
                assert [complete(b.url, key.key, 4), complete(b.url, key.key, 4, stream=True),
                        complete(b.url, key.key, 4)] == [200, 200, 200]
                assert metric(scrape(b.url), "gateway_ratelimit_speculative_admissions_total",
                              outcome="admitted") == 2
                length_before = finished(engine.url, "length")
                assert length_before == 4
                # A still believes in 3 requests of room: it speculates, Redis refuses.
                assert complete(a.url, key.key, LONG) == 429
                assert complete(a.url, key.key, LONG) == 429  # no room known now: not speculated
                a_metrics = scrape(a.url)
                assert metric(a_metrics, "gateway_ratelimit_speculative_admissions_total",
                              outcome="limited") == 1
                assert metric(a_metrics, "gateway_ratelimit_speculative_admissions_total",
                              outcome="admitted") == 0
                deadline = time.monotonic() + 10
                while metric(scrape(engine.url), "vllm:num_requests_running") > 0:
                    assert time.monotonic() < deadline, "the cancelled engine request kept running"
                    time.sleep(0.05)
                time.sleep(LONG * 0.01)  # as long as the refused request would have needed to finish
                assert finished(engine.url, "length") == length_before  # it never finished
        finally:
            delete_prefix(client, prefix)
            client.close()


def test_a_store_failure_closes_a_speculative_stream_that_already_opened(log_dir: Path,
                                                                        tmp_path: Path) -> None:
    key = generate_key()
    server = RedisServer(tmp_path)
    server.start()
    try:
        with sim_engine("vllm", MODEL, log_dir, name="spec-fast-engine",
                        args=["--profile", "fast"]) as engine:
            config = {
                "backends": [{"name": "engine", "kind": "vllm", "url": engine.url, "models": [MODEL]}],
                "tenancy": {"auth_enabled": True, "store": "redis", "redis_url": server.url,
                            "redis_prefix": unique_prefix("speculation-stall"), "redis_timeout_s": 0.3,
                            "on_store_failure": "fail_closed",
                            "tenants": [{"name": "spec", "limits": {"requests_per_minute": 1000}}],
                            "keys": [{"id": key.key_id, "hash": key.key_hash, "tenant": "spec"}]},
            }
            with gateways({"spec-stall": config}, log_dir) as (gateway,):
                assert complete(gateway.url, key.key, 4) == 200  # room known: the next one speculates
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    # About 1 ms per token here: still generating when Redis's 0.3 s timeout ends it.
                    assert complete(gateway.url, key.key, 2000, stream=True) == 503
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
                gateway_metrics = scrape(gateway.url)
                assert metric(gateway_metrics, "gateway_ratelimit_speculative_admissions_total",
                              outcome="unavailable") == 1
                deadline = time.monotonic() + 10
                while (metric(scrape(gateway.url), "gateway_backend_in_flight") > 0
                       or metric(scrape(engine.url), "vllm:num_requests_running") > 0):
                    assert time.monotonic() < deadline, "the abandoned stream was left open"
                    time.sleep(0.05)
                assert finished(engine.url, "length") == 1  # only the admitted request finished
                assert finished(engine.url, "abort") == 1  # the speculative stream had opened: closed
    finally:
        server.kill()
