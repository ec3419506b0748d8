"""The Lua scripts mirror policies/ratelimit.py: the same random sequence of admissions and
settlements, run on the memory store and on the Redis store, gives the same decisions, the same
clamped grants and the same remaining counts. Windows are a day long, so the milliseconds between
the two runs refill nothing that shows. With calls sent together (``together``), the Redis store
merges the admissions into one ``admit`` call and the settlements into one ``settle`` call, which must
land exactly where the same calls one by one do."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.tenancy.memory_store import MemoryLimitStore
from gateway.tenancy.redis_store import AdmitMerge, RedisLimitStore, SettleMerge, fast_pipeline
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


async def run(store: LimitStore, seed: int, prefix: str, together: bool = False) -> list[tuple[object, ...]]:
    """``together``: the settlements drawn between two admission steps and the 1-4 admissions of the
    next step are sent at once (in that order) instead of one at a time; sequence numbers join the
    trace."""
    rng = random.Random(seed)
    limits = random_limits(rng, prefix)
    open_leases: list[tuple[AdmitPlan, AdmitResult]] = []
    trace: list[tuple[object, ...]] = []
    waiting: list[tuple[AdmitPlan, int, int]] = []

    async def settle_waiting() -> None:
        results = await asyncio.gather(*(store.settle(*settlement) for settlement in waiting))
        trace.append(tuple(result.seq for result in results))
        waiting.clear()

    for _ in range(60 if not together else 120):
        if open_leases and rng.random() < 0.4:
            for _ in range(rng.randint(1, len(open_leases)) if together else 1):
                plan, result = open_leases.pop(rng.randrange(len(open_leases)))
                reserved = plan.demand.prompt_tokens + result.decision.completion_tokens
                settlement = (plan, rng.randint(0, reserved + 50) - reserved, result.now_us)
                if together:
                    waiting.append(settlement)
                else:
                    await store.settle(*settlement)
            continue
        plans = [AdmitPlan(uuid.uuid4().hex, limits, f"{prefix}ledger",
                           Demand(rng.randint(0, 300), rng.randint(0, 400), clamp=rng.random() < 0.5,
                                  min_completion_tokens=rng.randint(1, 20)), 60_000_000)
                 for _ in range(rng.randint(1, 4) if together else 1)]
        if together:
            replies = await asyncio.gather(*(store.settle(*settlement) for settlement in waiting),
                                           *(store.admit(plan) for plan in plans))
            trace.append(tuple(reply.seq for reply in replies))
            waiting.clear()
            results = [reply for reply in replies[-len(plans):] if isinstance(reply, AdmitResult)]
        else:
            results = [await store.admit(plans[0])]
        for plan, result in zip(plans, results, strict=True):
            trace.append(observed(result))
            if result.decision.admitted:
                open_leases.append((plan, result))
    if waiting:
        await settle_waiting()
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


@pytest.mark.parametrize("lean", [False, True], ids=["redis-py", "resp"])
async def test_calls_sent_together_land_as_one_by_one(lean: bool, prefix: str, shared_redis: Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    merged: dict[str, list[int]] = {"admit": [], "settle": []}
    for name, merge in (("admit", AdmitMerge), ("settle", SettleMerge)):
        def counting(self: Any, calls: Any, name: str = name, combine: Any = merge.combine) -> Any:
            merged[name].append(len(calls))
            return combine(self, calls)

        monkeypatch.setattr(merge, "combine", counting)
    for seed in range(8):
        memory = await run(MemoryLimitStore(), seed, f"{prefix}{seed}:", together=True)
        remote_store = RedisLimitStore(shared_redis, fast_pipeline(SHARED_REDIS, 5.0) if lean else None)
        try:
            remote = await run(remote_store, seed, f"{prefix}{seed}:", together=True)
        finally:
            await remote_store.aclose()
        assert remote == memory, seed
    # Seeds 0-7: about 700 admission steps of 2-4 requests at once, 13 of 2-5 settlements.
    assert len(merged["admit"]) >= 500 and max(merged["admit"]) == 4, merged
    assert len(merged["settle"]) >= 10 and max(merged["settle"]) >= 5, merged


@pytest.mark.parametrize("lean", [False, True], ids=["redis-py", "resp"])
async def test_merged_settlements_clamp_each_in_turn(lean: bool, prefix: str, shared_redis: Redis,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A refund past the bucket's capacity is cut at full before the next settlement charges: 600 left,
    # -500 gives 1,000 (not 1,100), +30 gives 970. Netting the two first (-470: full) would give 1,000.
    merged: list[int] = []
    combine = SettleMerge.combine
    monkeypatch.setattr(SettleMerge, "combine",
                        lambda self, calls: merged.append(len(calls)) or combine(self, calls))

    async def remaining_after(store: LimitStore, key_prefix: str) -> list[int | None]:
        limits = (PlannedLimit(key_prefix + "tpm", Limit(LimitKind.TOKENS, 1000, LONG), "tokens", "tenant"),
                  PlannedLimit(key_prefix + "day", Limit(LimitKind.QUOTA, 5000, 86_400_000_000),
                               "daily_tokens", "tenant"))
        plans = [AdmitPlan(uuid.uuid4().hex, limits, f"{key_prefix}ledger", Demand(100, 100), 60_000_000)
                 for _ in range(3)]
        first, second = [await store.admit(plan) for plan in plans[:2]]
        assert first.decision.admitted and second.decision.admitted
        await asyncio.gather(store.settle(plans[0], -500, first.now_us),
                             store.settle(plans[1], 30, second.now_us))
        probe = await store.admit(plans[2])
        ledger = await store.ledger(f"{key_prefix}ledger")
        return [probe.tokens and probe.tokens.remaining, ledger.charged_tokens, ledger.open_leases]

    memory = await remaining_after(MemoryLimitStore(), prefix)
    remote_store = RedisLimitStore(shared_redis, fast_pipeline(SHARED_REDIS, 5.0) if lean else None)
    try:
        remote = await remaining_after(remote_store, prefix)
    finally:
        await remote_store.aclose()
    assert memory == [770, 200 + 200 - 500 + 30 + 200, 1]  # 970 less the probe's 200
    assert remote == memory and merged == [2]
