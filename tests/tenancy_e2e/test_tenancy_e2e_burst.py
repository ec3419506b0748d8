"""A cold burst across replicas with the default store settings (fail_open, 0.25 s Redis timeout): 200
clients hit two freshly started gateways at the same moment, so each opens about 100 Redis
connections at once on a busy event loop. Slow connects must not be taken for a Redis outage (which
would switch the replicas to their own full in-memory buckets and admit the limit once per
replica): exactly the bucket's capacity is admitted, and no store error is counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from backends.launchers.process import ProcessLauncher
from gateway.tenancy.keys import generate_key
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

CAPACITY = 30  # requests per minute: one more every 2 s the burst lasts
CLIENTS = 200


async def burst(urls: list[str], key: str) -> list[int]:
    body = {"model": MODEL, "prompt": "burst", "max_tokens": 2}
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(index: int) -> int:
            async with session.post(urls[index % len(urls)] + "/v1/completions", json=body,
                                    headers=headers) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(i) for i in range(CLIENTS)))


def test_cold_burst_on_two_replicas_admits_the_bucket_once(engine: ProcessLauncher,
                                                           log_dir: Path) -> None:
    prefix = unique_prefix("burst")
    key = generate_key()
    config = {
        "backends": [{"name": "engine", "kind": "vllm", "url": engine.url, "models": [MODEL]}],
        "tenancy": {"auth_enabled": True, "store": "redis", "redis_url": SHARED_REDIS_URL,
                    "redis_prefix": prefix,
                    "tenants": [{"name": "burst", "limits": {"requests_per_minute": CAPACITY}}],
                    "keys": [{"id": key.key_id, "hash": key.key_hash, "tenant": "burst"}]},
    }
    client = shared_redis()
    try:
        with gateways({"burst-a": config, "burst-b": config}, log_dir) as replicas:
            started = time.monotonic()
            statuses = asyncio.run(burst([r.url for r in replicas], key.key))
            lasted = time.monotonic() - started
            texts = [scrape(r.url) for r in replicas]
    finally:
        delete_prefix(client, prefix)
        client.close()
    counted = {status: statuses.count(status) for status in set(statuses)}
    print(f"\ncold burst of {CLIENTS} on 2 replicas in {lasted:.2f} s: {counted}")
    assert sum(metric(t, "gateway_ratelimit_store_errors_total") for t in texts) == 0
    assert sum(metric(t, "gateway_ratelimit_fallback_total") for t in texts) == 0
    assert set(counted) == {200, 429}
    assert CAPACITY <= counted[200] <= CAPACITY + 1 + lasted * CAPACITY / 60  # the bucket and its refill
