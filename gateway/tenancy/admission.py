"""The tenancy component the app calls: authenticate a request, authorize its model, admit it against
every applicable limit (one store call) and hand back a Lease that is settled exactly once with the
real usage. Built once by the composition root from TenancyConfig; owns its Redis client, its
stores and a background heartbeat that keeps live concurrency leases from expiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.errors import AuthenticationError, PermissionDeniedError, RateLimitError, ServiceUnavailableError
from gateway.loop_bound import LoopRef
from gateway.tenancy.config import TenancyConfig, TenantConfig
from gateway.tenancy.headers import rate_limit_headers, retry_headers
from gateway.tenancy.keyrepo import KeyRepository, MemoryKeyRepository, RedisKeyRepository
from gateway.tenancy.keys import presented_key, verify_any
from gateway.tenancy.keystore import KeyStore
from gateway.tenancy.lease import Lease
from gateway.tenancy.limiter import Limiter, StoreHealth
from gateway.tenancy.memory_store import MemoryLimitStore
from gateway.tenancy.metrics import TenancyMetrics
from gateway.tenancy.planner import PlanCache, ledger_key
from gateway.tenancy.redis_store import RedisLimitStore, connect, fast_pipeline
from gateway.tenancy.refusal import refusal_message
from gateway.tenancy.speculation import Scope, SpeculationBudget
from gateway.tenancy.store import STORE_ERRORS, AdmitPlan, AdmitResult, Ledger, LimitStore
from policies.ratelimit import Demand

MAX_TOKENS = 10**9  # client numbers beyond this are absurd; bounded so store arithmetic stays exact
LAST_USED_FLUSH_S = 5.0


def estimate_tokens(text: str) -> int:
    """Prompt tokens before tokenization: about four characters per token, rounded up."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str | None = None  # None: anonymous (auth disabled)


class Admission:
    def __init__(self, config: TenancyConfig, *, registry: CollectorRegistry, redis: Redis | None = None,
                 logger: logging.Logger | None = None) -> None:
        self._config = config
        self._tenants = {t.name: t for t in config.tenants}
        self.metrics = TenancyMetrics(registry)
        self._logger = logger or logging.getLogger("gateway.tenancy")
        self._owns_redis = redis is None and config.store == "redis"
        self._redis = redis if redis is not None or config.store != "redis" else connect(
            config.redis_url, config.redis_timeout_s)
        fail_open = config.on_store_failure == "fail_open"
        self._health: StoreHealth | None = None
        self._redis_store: RedisLimitStore | None = None
        repository: KeyRepository = MemoryKeyRepository()
        primary: LimitStore = MemoryLimitStore()
        fallback: LimitStore | None = None
        if self._redis is not None:
            self._health = StoreHealth(self.metrics, self._logger, retry_s=config.store_retry_s,
                                       mode=config.on_store_failure, on_down=self._drop_idle_connections)
            repository = RedisKeyRepository(self._redis, config.redis_prefix)
            # The lean pipelined connection only beside a client this builds from the same URL.
            pipeline = fast_pipeline(config.redis_url, config.redis_timeout_s) if self._owns_redis else None
            redis_store = RedisLimitStore(self._redis, pipeline)
            self._redis_store = redis_store
            primary, fallback = redis_store, (primary if fail_open else None)
        self._limiter = Limiter(primary, fallback, self._health, self.metrics, mode=config.on_store_failure)
        self.keys = KeyStore(config.keys, repository, cache_ttl_s=config.key_cache_ttl_s,
                             use_stale_on_error=fail_open, on_store_error=self._key_store_failed)
        # Leases the heartbeat keeps alive, with when they were admitted (monotonic).
        self._live: dict[str, tuple[LimitStore, AdmitPlan, float]] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        # Lease ids: a random per-process prefix and a counter (unique across replicas without a
        # urandom call per request).
        lease_prefix = secrets.token_hex(8)
        self._lease_ids = (f"{lease_prefix}{n:x}" for n in itertools.count())
        self._background: asyncio.Task[None] | None = None
        self._loop = LoopRef()
        self._speculation = SpeculationBudget()
        self._plans = _plan_cache(config)
        self._anonymous = Principal(tenant=config.default_tenant)
        self.metrics.auth_enabled.set(1 if config.auth_enabled else 0)
        if not config.auth_enabled:
            self._logger.warning("AUTHENTICATION IS DISABLED: every request runs as tenant %r without an "
                                 "API key. Set tenancy.auth_enabled: true before exposing this gateway.",
                                 config.default_tenant)

    @property
    def config(self) -> TenancyConfig:
        return self._config

    def tenant(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)

    def _tenant_of(self, principal: Principal) -> TenantConfig:
        tenant = self._tenants.get(principal.tenant)
        if tenant is None:  # removed by a config reload after this request authenticated
            raise AuthenticationError(f"Tenant {principal.tenant!r} no longer exists.", code="unknown_tenant")
        return tenant

    def reload(self, config: TenancyConfig) -> None:
        """Swap tenants, limits, keys and auth settings live. Store settings need a restart."""
        fixed = ("store", "redis_url", "redis_prefix", "redis_timeout_s", "on_store_failure", "store_retry_s")
        changed = [name for name in fixed if getattr(config, name) != getattr(self._config, name)]
        if changed:
            raise ValueError(f"tenancy settings {', '.join(changed)} cannot change without a restart")
        self._config = config
        self._tenants = {t.name: t for t in config.tenants}
        self._anonymous = Principal(tenant=config.default_tenant)
        self._speculation = SpeculationBudget()  # the limits may have changed: wait for the store again
        self._plans = _plan_cache(config)
        self.keys.replace_config_keys(config.keys)
        self.metrics.auth_enabled.set(1 if config.auth_enabled else 0)

    def _drop_idle_connections(self) -> None:
        """Pooled connections to a Redis that failed are stale: reconnect after the outage."""
        if self._redis is not None:
            self._track(self._redis.connection_pool.disconnect(inuse_connections=False))

    def _key_store_failed(self, error: BaseException) -> None:
        if self._health is not None:
            self._health.failed("keys", error)

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        self._ensure_background()
        if not self._config.auth_enabled:
            return self._anonymous
        key = presented_key(headers)
        if key is None:
            self.metrics.auth_failures.labels("missing").inc()
            raise AuthenticationError("Missing API key: pass 'Authorization: Bearer <key>' or 'x-api-key'.",
                                      code="missing_api_key")
        try:
            record = await self.keys.lookup(key)
        except AuthenticationError as error:
            reason = "revoked" if error.code == "revoked_api_key" else "invalid"
            self.metrics.auth_failures.labels(reason).inc()
            raise
        except ServiceUnavailableError:
            self.metrics.auth_failures.labels("unavailable").inc()
            raise
        if record.tenant not in self._tenants:
            self.metrics.auth_failures.labels("invalid").inc()
            raise AuthenticationError("This API key belongs to a tenant that no longer exists.",
                                      code="unknown_tenant")
        return Principal(tenant=record.tenant, key_id=record.key_id)

    def authorize_model(self, principal: Principal, model: str) -> None:
        """403 when the tenant may not use ``model`` (the app answers 404 first for unserved models)."""
        if not self._tenant_of(principal).allows(model):
            self.metrics.auth_failures.labels("model_not_allowed").inc()
            raise PermissionDeniedError(f"Tenant {principal.tenant!r} is not allowed to use model {model!r}.",
                                        param="model")

    def allowed_models(self, principal: Principal, models: Iterable[str]) -> list[str]:
        """The served models this principal's tenant may use (what ``/v1/models`` lists)."""
        tenant = self._tenant_of(principal)
        return [model for model in models if tenant.allows(model)]

    def check_admin(self, headers: Mapping[str, str]) -> None:
        if not self._config.admin_key_hashes:
            raise PermissionDeniedError("The admin API is disabled: set tenancy.admin_key_hashes.",
                                        code="admin_disabled")
        key = presented_key(headers)
        if key is None or not verify_any(key, self._config.admin_key_hashes):
            self.metrics.auth_failures.labels("admin").inc()
            raise AuthenticationError("Invalid admin key.", code="invalid_admin_key")

    def _reservation(self, prompt_tokens_estimate: int, max_tokens: int | None) -> tuple[int, int]:
        """The prompt and completion tokens a request reserves (bounded so store arithmetic stays exact)."""
        prompt = min(max(0, prompt_tokens_estimate), MAX_TOKENS)
        asked = max_tokens if max_tokens is not None else self._config.default_completion_reservation
        return prompt, min(max(0, asked), MAX_TOKENS)

    def speculate(self, principal: Principal, model: str, prompt_tokens_estimate: int,
                  max_tokens: int | None) -> bool:
        """Whether the engine request may start before ``admit`` has decided (``speculation.py``): the
        store is Redis (a round trip to hide), every limit is a per-minute bucket the store reports room
        for (no daily quota, no concurrency), the decision cannot lower max_tokens (no clamping on a
        token limit), and the scope's last answer left room beyond the speculations still pending. When
        it says yes, pass ``speculative=True`` to ``admit`` for that request."""
        config = self._config
        if not config.speculative_admission or self._redis_store is None:
            return False
        tenant = self._tenants.get(principal.tenant)
        if tenant is None:
            return False
        if not self._plans.plan(tenant, model, principal.key_id).speculatable:
            return False
        prompt, completion = self._reservation(prompt_tokens_estimate, max_tokens)
        return self._speculation.take(_scope(principal, model), prompt + completion)

    async def admit(self, principal: Principal, model: str, prompt_tokens_estimate: int,
                    max_tokens: int | None, *, speculative: bool = False) -> Lease:
        """Reserve prompt + max_tokens (or the default reservation) on every applicable limit.
        ``speculative``: ``speculate`` said yes for this request (its engine request has started)."""
        self._ensure_background()
        tenant = self._tenant_of(principal)
        scope_plan = self._plans.plan(tenant, model, principal.key_id)
        limits = scope_plan.limits
        if not limits:
            return Lease(self, principal.tenant, None, None, 0, 0, {}, max_tokens)
        prompt, completion = self._reservation(prompt_tokens_estimate, max_tokens)
        demand = Demand(prompt, completion, tenant.clamp_max_tokens,
                        min(self._config.min_clamped_tokens, completion))
        plan = AdmitPlan(next(self._lease_ids), limits, ledger_key(self._config.redis_prefix, tenant.name),
                         demand, int(self._config.lease_ttl_s * 1e6))
        started = time.perf_counter()
        scope = _scope(principal, model)
        try:
            result, store = await self._decide(plan)
        except asyncio.CancelledError:
            self._speculation.forget(scope)
            raise
        except ServiceUnavailableError:
            self._speculation.forget(scope)
            self.metrics.decisions.labels(tenant.name, "unavailable").inc()
            if speculative:
                self.metrics.speculations.labels("unavailable").inc()
            raise
        self.metrics.admit_seconds.labels(store.name).observe(time.perf_counter() - started)
        decision = result.decision
        if speculative:
            self.metrics.speculations.labels("admitted" if decision.admitted else "limited").inc()
        if store is self._redis_store:  # a fallback store's room says nothing of the shared buckets
            self._speculation.decided(
                scope, prompt + completion, speculative=speculative, admitted=decision.admitted,
                requests_left=math.inf if result.requests is None else result.requests.remaining,
                tokens_left=math.inf if result.tokens is None else result.tokens.remaining)
        else:
            self._speculation.forget(scope)
        headers = rate_limit_headers(result.requests, result.tokens)
        if not decision.admitted:
            refused = limits[decision.refused_index]
            self.metrics.decisions.labels(tenant.name, "limited").inc()
            self.metrics.limited.labels(tenant.name, refused.name, refused.scope).inc()
            if decision.retry_after_us is not None:
                headers.update(retry_headers(decision.retry_after_us))
            raise RateLimitError(refusal_message(refused, tenant.name, prompt + decision.completion_tokens,
                                                 decision.retry_after_us), headers=headers)
        granted = max_tokens
        if tenant.clamp_max_tokens and scope_plan.token_limited and (
                max_tokens is None or decision.completion_tokens < max_tokens):
            granted = decision.completion_tokens
        clamped = max_tokens is not None and granted is not None and granted < max_tokens
        self.metrics.decisions.labels(tenant.name, "clamped" if clamped else "admitted").inc()
        lease = Lease(self, tenant.name, store, plan, prompt + decision.completion_tokens, result.now_us,
                      headers, granted)
        if plan.concurrency_keys:
            self._live[plan.lease_id] = (store, plan, time.monotonic())
        self.metrics.active_leases.inc()
        return lease

    async def _decide(self, plan: AdmitPlan) -> tuple[AdmitResult, LimitStore]:
        """The store's decision. If the caller is cancelled meanwhile, the decision still completes
        and whatever it admits is refunded (the client left while the store was deciding). On Redis
        the call is only a future of the batch's reply (no task), awaited bare: the batcher hands a
        reply that comes after a cancellation to ``on_orphan`` (a ``shield`` would cost a loop turn
        per admission); otherwise the limiter's ``admit`` runs as a task of its own."""
        raw = self._limiter.admit_later(plan, functools.partial(self._release_orphan_value, plan))
        if raw is None:
            attempt = self._loop.create_task(self._limiter.admit(plan))
            try:
                return await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(functools.partial(self._release_orphan, plan))
                raise
        try:
            reply = await raw
        except asyncio.CancelledError:
            if raw.done() and not raw.cancelled():  # answered, then this task was cancelled
                self._release_orphan_value(plan, raw.exception() or raw.result())
            raise
        except STORE_ERRORS as error:
            return await self._limiter.admit_after_failure(plan, error)
        return self._limiter.admitted(reply)

    def _release_orphan_value(self, plan: AdmitPlan, reply: Any) -> None:
        if isinstance(reply, BaseException):
            return  # nothing was admitted (a failed store call is the next admission's to notice)
        self._refund_orphan(plan, *self._limiter.admitted(reply))

    def _release_orphan(self, plan: AdmitPlan,
                        attempt: asyncio.Future[tuple[AdmitResult, LimitStore]]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            return
        self._refund_orphan(plan, *attempt.result())

    def _refund_orphan(self, plan: AdmitPlan, result: AdmitResult, store: LimitStore) -> None:
        if result.decision.admitted:
            reserved = plan.demand.prompt_tokens + result.decision.completion_tokens
            self._track(self._limiter.settle(store, plan, -reserved, result.now_us))

    def _track(self, work: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``work`` to completion even if its caller is cancelled; aclose waits for it."""
        task = self._loop.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(self, lease: Lease, actual_tokens: int) -> None:
        """Called once per lease by Lease.settle; survives the caller's cancellation. A settlement on
        Redis is not waited for: nothing on the response path needs its answer, and it goes out with
        the next admission (script_batch.py); ``aclose`` still waits for it."""
        if lease.plan is None or lease.store is None:
            return
        self._live.pop(lease.plan.lease_id, None)
        self.metrics.active_leases.dec()
        delta = actual_tokens - lease.reserved_tokens
        self.metrics.settled_tokens.labels(lease.tenant).inc(actual_tokens)
        self.metrics.refunded_tokens.labels(lease.tenant).inc(max(0, -delta))
        if self._limiter.can_settle_later(lease.store):
            queued = self._limiter.settle_later(lease.plan, delta, lease.admitted_us)
            if queued is not None:
                self._pending.add(queued)
                queued.add_done_callback(self._pending.discard)
            return
        settling = self._track(self._limiter.settle(lease.store, lease.plan, delta, lease.admitted_us))
        if not self._limiter.remote:
            await asyncio.shield(settling)

    async def usage(self, tenant: str) -> Ledger:
        """Net tokens charged to ``tenant`` and its leases not yet settled (what the store recorded,
        once this process's settlements still on their way have arrived)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        return await self._limiter.ledger(ledger_key(self._config.redis_prefix, tenant))

    def _ensure_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = self._loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        interval = min(self._config.lease_ttl_s / 3, LAST_USED_FLUSH_S)
        flushed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._limiter.refresh(self._leases_to_refresh())
            except Exception:  # the heartbeat must outlive any one failure
                self._logger.exception("lease heartbeat failed")
            if time.monotonic() - flushed >= LAST_USED_FLUSH_S:
                flushed = time.monotonic()
                with contextlib.suppress(*STORE_ERRORS):
                    await self.keys.flush_last_used()

    def _leases_to_refresh(self) -> list[tuple[LimitStore, AdmitPlan]]:
        """Live leases, minus any held longer than max_request_s: a lease its caller never settled
        (a bug) stops being refreshed and expires instead of holding a slot forever."""
        oldest = time.monotonic() - self._config.max_request_s
        for lease_id in [i for i, (_, _, since) in self._live.items() if since < oldest]:
            del self._live[lease_id]
            self._logger.warning("a lease was held over %.0f s without settlement; letting it expire",
                                 self._config.max_request_s)
        return [(store, plan) for store, plan, _ in self._live.values()]

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._pending:
            await asyncio.wait(self._pending, timeout=2.0)
        with contextlib.suppress(*STORE_ERRORS):
            await self.keys.flush_last_used()
        if self._redis_store is not None:
            await self._redis_store.aclose()
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()


def _plan_cache(config: TenancyConfig) -> PlanCache:
    return PlanCache(config.redis_prefix, config.global_limits, {k.id: k.limits for k in config.keys})


def _scope(principal: Principal, model: str) -> Scope:
    return principal.tenant, principal.key_id or "", model
