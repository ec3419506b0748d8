"""The Lua scripts mirror policies/ratelimit.py: the same random sequence of admissions and
settlements, run on the memory store and on the Redis store, gives the same decisions, the same
clamped grants and the same remaining counts. Windows are a day long, so the milliseconds between
the two runs refill nothing that shows."""

from __future__ import annotations

import random
import uuid

import pytest
from redis.asyncio import Redis

from gateway.tenancy.memory_store import MemoryLimitStore
from gateway.tenancy.redis_store import RedisLimitStore, fast_pipeline
from gateway.tenancy.store import AdmitPlan, AdmitResult, LimitStore, PlannedLimit
from policies.ratelimit import Demand, Limit, LimitKind
from tests.tenancy.conftest import SHARED_REDIS

LONG = 100_000_000_000  # ~28 hours


def random_limits(rng: random.Random, prefix: str) -> tuple[PlannedLimit, ...]:
    specs = [("rpm", LimitKind.REQUESTS, rng.randint(5, 40), LONG, "requests"),
             ("tpm", LimitKind.TOKENS, rng.randint(500, 3000), LONG, "tokens"),
             ("tpm2", LimitKind.TOKENS, rng.randint(500, 3000), LONG, "tokens"),
             ("day", LimitKind.QUOTA, rng.randint(1000, 5000), 86_400_000_000, "daily_tokens"),
             ("conc", LimitKind.CONCURRENCY, rng.randint(1, 6), 0, "concurrency")]
    limits = [PlannedLimit(prefix + key, Limit(kind, capacity, window), name, "tenant")
              for key, kind, capacity, window, name in specs]
    return tuple(limit for limit in limits if rng.random() < 0.8) or tuple(limits[:1])


def observed(result: AdmitResult) -> tuple[object, ...]:
    decision = result.decision
    return (decision.admitted, decision.completion_tokens, decision.refused_index,
            decision.retry_after_us is None, result.requests and result.requests.remaining,
            result.tokens and result.tokens.remaining)


async def run(store: LimitStore, seed: int, prefix: str) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    limits = random_limits(rng, prefix)
    open_leases: list[tuple[AdmitPlan, AdmitResult]] = []
    trace: list[tuple[object, ...]] = []
    for _ in range(60):
        if open_leases and rng.random() < 0.4:
            plan, result = open_leases.pop(rng.randrange(len(open_leases)))
            reserved = plan.demand.prompt_tokens + result.decision.completion_tokens
            await store.settle(plan, rng.randint(0, reserved + 50) - reserved, result.now_us)
            continue
        demand = Demand(rng.randint(0, 300), rng.randint(0, 400), clamp=rng.random() < 0.5,
                        min_completion_tokens=rng.randint(1, 20))
        plan = AdmitPlan(uuid.uuid4().hex, limits, f"{prefix}ledger", demand, 60_000_000)
        result = await store.admit(plan)
        trace.append(observed(result))
        if result.decision.admitted:
            open_leases.append((plan, result))
    ledger = await store.ledger(f"{prefix}ledger")
    trace.append((ledger.charged_tokens, ledger.open_leases))
    return trace


@pytest.mark.parametrize("lean", [False, True], ids=["redis-py", "resp"])
@pytest.mark.parametrize("seed", range(6))
async def test_redis_store_decides_exactly_like_the_python_arithmetic(seed: int, lean: bool, prefix: str,
                                                                     shared_redis: Redis) -> None:
    memory = await run(MemoryLimitStore(), seed, f"{prefix}{seed}:")
    remote_store = RedisLimitStore(shared_redis, fast_pipeline(SHARED_REDIS, 5.0) if lean else None)
    try:
        remote = await run(remote_store, seed, f"{prefix}{seed}:")
    finally:
        await remote_store.aclose()
    assert remote == memory
    assert any(not step[0] for step in memory[:-1]) and any(step[0] for step in memory[:-1])
