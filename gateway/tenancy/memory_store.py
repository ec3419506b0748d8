"""The in-memory limiter: one process's limits, the default store and the fail-open fallback. Runs
policies.ratelimit.decide over plain dicts; no await inside a decision, so each admit is atomic on
the event loop. Same semantics as the Redis store (state kept per store key, leases expire).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.tenancy.store import AdmitPlan, AdmitResult, Ledger, SettleResult
from policies import ratelimit as rl
from policies.ratelimit import LimitKind


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class _Bucket:
    level: int
    updated_us: int
    window_us: int


class MemoryLimitStore:
    name = "memory"

    def __init__(self, clock_us: Callable[[], int] = wall_clock_us) -> None:
        self._clock = clock_us
        self._buckets: dict[str, _Bucket] = {}
        self._quotas: dict[str, tuple[int, int]] = {}  # key -> (period, used)
        self._leases: dict[str, dict[str, int]] = {}  # key -> lease id -> expiry_us
        self._ledgers: dict[str, list[int]] = {}  # key -> [charged, open, seq]

    def _level(self, key: str, limit: rl.Limit, now: int) -> int | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        level = rl.bucket_rescale(bucket.level, bucket.window_us, limit.window_us)
        return rl.bucket_refill(level, bucket.updated_us, now, limit.capacity, limit.window_us)

    def _state(self, key: str, limit: rl.Limit, now: int) -> int:
        if limit.kind in (LimitKind.REQUESTS, LimitKind.TOKENS):
            level = self._level(key, limit, now)
            return limit.full if level is None else level
        if limit.kind == LimitKind.QUOTA:
            period, used = self._quotas.get(key, (-1, 0))
            return used if period == rl.quota_period(now, limit.window_us) else 0
        leases = self._leases.setdefault(key, {})
        for lease_id in [i for i, expiry in leases.items() if expiry <= now]:
            del leases[lease_id]
        return len(leases)

    def _ledger(self, key: str) -> list[int]:
        return self._ledgers.setdefault(key, [0, 0, 0])

    async def admit(self, plan: AdmitPlan) -> AdmitResult:
        now = self._clock()
        limits = [p.limit for p in plan.limits]
        state = [self._state(p.key, p.limit, now) for p in plan.limits]
        decision = rl.decide(limits, state, now, plan.demand)
        seq = 0
        if decision.admitted:
            cost = plan.demand.prompt_tokens + decision.completion_tokens
            for index, planned in enumerate(plan.limits):
                limit = planned.limit
                state[index] = rl.charge(limit, state[index], cost)
                if limit.kind in (LimitKind.REQUESTS, LimitKind.TOKENS):
                    self._buckets[planned.key] = _Bucket(state[index], now, limit.window_us)
                elif limit.kind == LimitKind.QUOTA:
                    self._quotas[planned.key] = (rl.quota_period(now, limit.window_us), state[index])
                else:
                    self._leases[planned.key][plan.lease_id] = now + plan.lease_ttl_us
            ledger = self._ledger(plan.ledger_key)
            ledger[0] += cost
            ledger[1] += 1
            ledger[2] += 1
            seq = ledger[2]
        return AdmitResult(decision=decision, now_us=now, seq=seq,
                           requests=rl.report(limits, state, LimitKind.REQUESTS),
                           tokens=rl.report(limits, state, LimitKind.TOKENS))

    async def settle(self, plan: AdmitPlan, delta_tokens: int, admitted_us: int) -> SettleResult:
        now = self._clock()
        for planned in plan.settled_limits:
            limit = planned.limit
            if limit.kind == LimitKind.TOKENS and delta_tokens != 0:
                level = self._level(planned.key, limit, now)
                if level is not None or delta_tokens > 0:
                    level = limit.full if level is None else level
                    level = rl.bucket_adjust(level, delta_tokens, limit.capacity, limit.window_us)
                    self._buckets[planned.key] = _Bucket(level, now, limit.window_us)
            elif limit.kind == LimitKind.QUOTA and delta_tokens != 0:
                period, used = self._quotas.get(planned.key, (-1, 0))
                if period == rl.quota_period(admitted_us, limit.window_us):
                    self._quotas[planned.key] = (period, max(0, used + delta_tokens))
            elif limit.kind == LimitKind.CONCURRENCY:
                self._leases.get(planned.key, {}).pop(plan.lease_id, None)
        ledger = self._ledger(plan.ledger_key)
        ledger[0] += delta_tokens
        ledger[1] -= 1
        ledger[2] += 1
        return SettleResult(now_us=now, seq=ledger[2])

    async def refresh(self, plans: Sequence[AdmitPlan]) -> int:
        now = self._clock()
        refreshed = 0
        for plan in plans:
            for key in plan.concurrency_keys:
                leases = self._leases.get(key, {})
                if plan.lease_id in leases:
                    leases[plan.lease_id] = now + plan.lease_ttl_us
                    refreshed += 1
        return refreshed

    async def ledger(self, ledger_key: str) -> Ledger:
        charged, open_leases, _ = self._ledger(ledger_key)
        return Ledger(charged_tokens=charged, open_leases=open_leases)

    async def aclose(self) -> None:
        return None
