"""One OS process of the exactness test: many asyncio clients hammer one tenant's limits on a shared
Redis through the Redis limiter store, and every admission, refusal and settlement is written as a
JSON line with the store's own clock and per-ledger sequence number, for the test to audit.

Run: python exactness_worker.py '<json: redis_url, prefix, limits, clients, start_at, duration_s,
seed, out, hold_ms, prompt, completion, completion_used>'
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from typing import Any

from gateway.tenancy.redis_store import RedisLimitStore, connect
from gateway.tenancy.store import STORE_ERRORS, AdmitPlan, PlannedLimit
from policies.ratelimit import Demand, Limit, LimitKind

NAMES = {1: "requests", 2: "tokens", 3: "daily_tokens", 4: "concurrency"}


async def client(store: RedisLimitStore, spec: dict[str, Any], limits: tuple[PlannedLimit, ...],
                 rng: random.Random, end: float, events: list[list[Any]], errors: list[str]) -> None:
    while time.time() < end:
        prompt = rng.randint(*spec["prompt"])
        completion = spec["completion"]
        plan = AdmitPlan(uuid.uuid4().hex, limits, spec["prefix"] + "ledger", Demand(prompt, completion),
                         30_000_000)
        try:
            result = await store.admit(plan)
        except STORE_ERRORS as error:
            errors.append(type(error).__name__)
            await asyncio.sleep(0.01)
            continue
        decision = result.decision
        if not decision.admitted:
            events.append(["r", 0, result.now_us, 0])
            wait = (decision.retry_after_us or 1_000_000) / 1e6
            await asyncio.sleep(wait + rng.uniform(0, spec["jitter_ms"] / 1000))
            continue
        cost = prompt + decision.completion_tokens
        events.append(["a", result.seq, result.now_us, cost])
        await asyncio.sleep(rng.uniform(*spec["hold_ms"]) / 1000)
        used = prompt + rng.randint(*spec["completion_used"])
        try:
            settled = await store.settle(plan, used - cost, result.now_us)
        except STORE_ERRORS as error:
            errors.append(type(error).__name__)
            continue
        events.append(["s", settled.seq, settled.now_us, used - cost])


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    redis = connect(spec["redis_url"], 5.0)  # exactness, not latency: ride out a starved CPU
    store = RedisLimitStore(redis)
    limits = tuple(PlannedLimit(spec["prefix"] + name, Limit(LimitKind(kind), capacity, window), NAMES[kind],
                                "tenant") for name, kind, capacity, window in spec["limits"])
    rng = random.Random(spec["seed"])
    events: list[list[Any]] = []
    errors: list[str] = []
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    end = spec["start_at"] + spec["duration_s"]
    await asyncio.gather(*(client(store, spec, limits, random.Random(rng.random()), end, events, errors)
                           for _ in range(spec["clients"])))
    await redis.aclose()
    return {"events": events, "errors": errors}


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    result = asyncio.run(main(arguments))
    with open(arguments["out"], "w") as out:
        json.dump(result, out)
