"""Runs admissions on the configured store and applies the failure policy when Redis fails.

fail_open: the in-memory limiter takes over (each replica then enforces the limits alone), every
such operation is counted, and the incident is logged once when it starts and once when it ends.
fail_closed: ServiceUnavailableError (503). Either way, after a failure Redis is skipped for
``retry_s`` and then probed by a single request, so an outage costs no request more than one
timeout. A lease is settled on the store that admitted it; a settlement Redis cannot take is
counted and dropped (the reservation stays charged, the concurrency lease expires by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from gateway.errors import ServiceUnavailableError
from gateway.tenancy.metrics import TenancyMetrics
from gateway.tenancy.redis_store import RedisLimitStore
from gateway.tenancy.store import STORE_ERRORS, AdmitPlan, AdmitResult, Ledger, LimitStore, SettleResult

FailureMode = Literal["fail_open", "fail_closed"]
log = logging.getLogger("gateway.tenancy.limiter")


class StoreHealth:
    """Tracks Redis incidents: one log line when an outage starts, one when it ends."""

    def __init__(self, metrics: TenancyMetrics, logger: logging.Logger, *, retry_s: float,
                 mode: FailureMode, clock: Callable[[], float] = time.monotonic,
                 on_down: Callable[[], None] = lambda: None) -> None:
        self._metrics = metrics
        self._logger = logger
        self._retry_s = retry_s
        self._mode = mode
        self._clock = clock
        self._on_down = on_down
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        """True when Redis should be called now: healthy, or the one probe after the back-off."""
        if self._down_since is None:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._retry_s
        return True

    def failed(self, operation: str, error: BaseException) -> None:
        self._metrics.store_errors.labels(operation).inc()
        self._next_probe = self._clock() + self._retry_s
        if self._down_since is None:
            self._down_since = self._clock()
            self._metrics.incidents.inc()
            self._metrics.store_up.set(0)
            self._on_down()
            self._logger.warning("rate-limit store (Redis) unavailable during %s: %s: %s; %s until it "
                                 "answers again", operation, type(error).__name__, error or "no detail",
                                 "using the in-memory limiter (fail_open)" if self._mode == "fail_open"
                                 else "refusing requests with 503 (fail_closed)")

    def succeeded(self) -> None:
        if self._down_since is not None:
            self._logger.info("rate-limit store (Redis) answers again after %.1f s; shared limits "
                                 "resume", self._clock() - self._down_since)
            self._down_since = None
            self._metrics.store_up.set(1)


class Limiter:
    def __init__(self, primary: LimitStore, fallback: LimitStore | None, health: StoreHealth | None,
                 metrics: TenancyMetrics, *, mode: FailureMode) -> None:
        self._primary = primary
        self._fallback = fallback
        self._health = health
        self._metrics = metrics
        self._mode = mode
        # The shared store when it is Redis's: its calls can be queued as futures, without a task.
        self._queued = primary if isinstance(primary, RedisLimitStore) and health is not None else None

    @property
    def remote(self) -> bool:
        return self._health is not None

    async def admit(self, plan: AdmitPlan) -> tuple[AdmitResult, LimitStore]:
        if self._health is None:
            return await self._primary.admit(plan), self._primary
        if self._health.should_try():
            try:
                result = await self._primary.admit(plan)
            except STORE_ERRORS as error:
                self._health.failed("admit", error)
            else:
                self._health.succeeded()
                return result, self._primary
        return await self._admit_elsewhere(plan)

    def admit_later(self, plan: AdmitPlan, on_orphan: Callable[[Any], None] | None = None
                    ) -> asyncio.Future[Any] | None:
        """``admit`` on the shared store without a task: the future of its raw reply, to pass to
        ``admitted`` (or, if it raised one of ``STORE_ERRORS``, to ``admit_after_failure``). None when
        this admission cannot go that way (no shared store, or it is down: ``admit`` probes it).
        ``on_orphan`` gets the raw reply (or error) if the future is cancelled before it comes."""
        if self._queued is None or self._health is None or self._health.down:
            return None
        return self._queued.admit_later(plan, on_orphan)

    def admitted(self, raw: Any) -> tuple[AdmitResult, LimitStore]:
        """The decision in an ``admit_later`` reply."""
        assert self._health is not None
        result = RedisLimitStore.admit_result(raw)
        self._health.succeeded()
        return result, self._primary

    async def admit_after_failure(self, plan: AdmitPlan,
                                  error: BaseException) -> tuple[AdmitResult, LimitStore]:
        """An ``admit_later`` that failed with a store error: as ``admit`` goes on after one."""
        assert self._health is not None
        self._health.failed("admit", error)
        return await self._admit_elsewhere(plan)

    async def _admit_elsewhere(self, plan: AdmitPlan) -> tuple[AdmitResult, LimitStore]:
        if self._mode == "fail_closed" or self._fallback is None:
            raise ServiceUnavailableError("Rate limits cannot be checked right now (limiter store "
                                          "unavailable); retry shortly.", code="limiter_unavailable")
        self._metrics.fallbacks.labels("admit").inc()
        return await self._fallback.admit(plan), self._fallback

    async def settle(self, store: LimitStore, plan: AdmitPlan, delta: int,
                     admitted_us: int) -> SettleResult | None:
        if store is not self._primary or self._health is None:
            return await store.settle(plan, delta, admitted_us)
        if self._health.down and not self._health.should_try():
            self._metrics.settle_failures.inc()
            return None
        try:
            result = await store.settle(plan, delta, admitted_us)
        except STORE_ERRORS as error:
            self._health.failed("settle", error)
            self._metrics.settle_failures.inc()
            return None
        self._health.succeeded()
        return result

    def can_settle_later(self, store: LimitStore) -> bool:
        """Whether ``settle_later`` takes a lease of ``store``: the shared (Redis) store's."""
        return self._queued is not None and store is self._queued

    def settle_later(self, plan: AdmitPlan, delta: int, admitted_us: int) -> asyncio.Future[Any] | None:
        """``settle`` on the shared store for a caller that does not wait for the answer, without a task:
        the settlement rides with the next admission, and its failure is handled in a callback as
        ``settle`` handles it. The future to wait for at shutdown; None when Redis is down and skipped
        (the settlement is counted as dropped, as in ``settle``)."""
        assert self._health is not None and self._queued is not None
        if self._health.down and not self._health.should_try():
            self._metrics.settle_failures.inc()
            return None
        future = self._queued.settle_later(plan, delta, admitted_us)
        future.add_done_callback(self._settled_later)
        return future

    def _settled_later(self, future: asyncio.Future[Any]) -> None:
        assert self._health is not None
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._health.succeeded()
            return
        self._metrics.settle_failures.inc()
        if isinstance(error, STORE_ERRORS):
            self._health.failed("settle", error)
        else:
            log.error("settlement failed: %s: %s", type(error).__name__, error)

    async def refresh(self, leases: Sequence[tuple[LimitStore, AdmitPlan]]) -> None:
        for store in (self._primary, self._fallback):
            plans = [plan for owner, plan in leases if owner is store]
            if store is None or not plans:
                continue
            if store is not self._primary or self._health is None:
                await store.refresh(plans)
                continue
            if self._health.down and not self._health.should_try():
                continue
            try:
                await store.refresh(plans)
            except STORE_ERRORS as error:
                self._health.failed("refresh", error)
            else:
                self._health.succeeded()

    async def ledger(self, ledger_key: str) -> Ledger:
        return await self._primary.ledger(ledger_key)
