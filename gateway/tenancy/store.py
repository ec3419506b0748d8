"""The limiter store interface shared by the memory and Redis stores (and the fail-open/closed
wrapper): admit a plan atomically, settle it once with the real usage, keep its concurrency
lease alive. A plan lists every applicable limit with its store key, so both stores run the same
decision (policies.ratelimit.decide) over the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from policies.ratelimit import Decision, Demand, Limit, LimitKind, Report

# What a failing Redis raises through redis.asyncio (timeouts included).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class PlannedLimit:
    key: str  # store key
    limit: Limit
    name: str  # requests | tokens | daily_tokens | concurrency (metric label)
    scope: str  # global | tenant | model | key


@dataclass(frozen=True, slots=True)
class AdmitPlan:
    lease_id: str
    limits: tuple[PlannedLimit, ...]
    ledger_key: str
    demand: Demand
    lease_ttl_us: int

    @property
    def settled_limits(self) -> tuple[PlannedLimit, ...]:
        """Limits touched again at settlement (requests are never refunded)."""
        return tuple(p for p in self.limits if p.limit.kind != LimitKind.REQUESTS)

    @property
    def concurrency_keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.limits if p.limit.kind == LimitKind.CONCURRENCY)


@dataclass(frozen=True, slots=True)
class AdmitResult:
    decision: Decision
    now_us: int  # the store's clock at admission (Redis TIME for the Redis store)
    seq: int  # per-ledger operation number (0 when refused): orders admissions and settlements
    requests: Report | None
    tokens: Report | None


@dataclass(frozen=True, slots=True)
class SettleResult:
    now_us: int
    seq: int


@dataclass(frozen=True, slots=True)
class Ledger:
    charged_tokens: int  # net tokens charged (reservations adjusted to real usage when settled)
    open_leases: int  # admitted and not yet settled


class LimitStore(Protocol):
    name: str

    async def admit(self, plan: AdmitPlan) -> AdmitResult: ...

    async def settle(self, plan: AdmitPlan, delta_tokens: int, admitted_us: int) -> SettleResult:
        """Charge (delta > 0) or refund (delta < 0) the difference and release the lease. Once."""
        ...

    async def refresh(self, plans: Sequence[AdmitPlan]) -> int:
        """Extend the concurrency leases of live requests (the heartbeat); returns how many."""
        ...

    async def ledger(self, ledger_key: str) -> Ledger: ...

    async def aclose(self) -> None: ...
