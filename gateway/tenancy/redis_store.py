"""The Redis limiter: every admission and every settlement runs in an atomic Lua script, so N gateway
replicas share exactly one limit. The calls made in the same event-loop iteration travel as one
pipeline, and a settlement waits (2 ms at most) to ride with the next admission (script_batch.py).
Admissions that travel together and check the same limits go as one ``admit`` call that decides them
in order, and settlements likewise as one ``settle`` call; a lone call is the case of one.
The scripts (gateway/tenancy/lua.py) use Redis ``TIME``. Also builds the Redis
client with tight timeouts and no retries, so a failing Redis costs a bounded wait, never a hang
(the caller decides fail_open or fail_closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.tenancy import lua
from gateway.tenancy.resp import RespPipeline
from gateway.tenancy.script_batch import Arg, LuaScript, ScriptBatcher
from gateway.tenancy.store import AdmitPlan, AdmitResult, Ledger, SettleResult
from policies.ratelimit import Decision, Report

REFRESH_BATCH = 1000  # leases per heartbeat script call
# A burst of concurrent requests opens as many new connections at once; on a busy event loop their
# connects can take longer than a command timeout although Redis is fine, and a false outage would
# switch fail_open replicas to their local limiters (full buckets: overshoot). A refused connection
# (Redis down) fails at once whatever this is; only an unreachable host waits it out.
MIN_CONNECT_TIMEOUT_S = 2.0


def connect(url: str, timeout_s: float) -> Redis:
    """A client whose every call fails within about ``timeout_s`` when Redis is down or slow (a new
    connection to a host that does not answer at all: within MIN_CONNECT_TIMEOUT_S)."""
    client: Redis = Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=max(timeout_s, MIN_CONNECT_TIMEOUT_S),
                                   retry=Retry(NoBackoff(), 0), retry_on_error=[],
                                   health_check_interval=0, decode_responses=False)
    return client


def fast_pipeline(url: str, timeout_s: float) -> RespPipeline | None:
    """The limiter's lean connection for ``url`` with ``connect``'s timeouts (None: a URL it does not
    speak, such as rediss:// or unix://; redis-py then carries the scripts too)."""
    return RespPipeline.from_url(url, timeout_s=timeout_s,
                                 connect_timeout_s=max(timeout_s, MIN_CONNECT_TIMEOUT_S))


def _report(limit: int, remaining: int, reset_us: int) -> Report | None:
    return None if limit < 0 else Report(limit, remaining, reset_us)


def _limit_args(plan_limits: Sequence[Any]) -> list[int]:
    args: list[int] = []
    for planned in plan_limits:
        args += [int(planned.limit.kind), planned.limit.capacity, planned.limit.window_us]
    return args


ADMIT_REPLY = 12  # numbers per request in the admit script's reply


class _ScriptMerge:
    """Both scripts take ARGV = count, then ``per_call`` values per call, then the limits' values:
    calls on the same keys and limits become one call carrying each call's values in order."""

    per_call = 0

    def __init__(self, script: LuaScript) -> None:
        self._script = script

    def group(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Hashable | None:
        return (tuple(keys), tuple(args[1 + self.per_call:]))

    def combine(self, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
                ) -> tuple[LuaScript, Sequence[Arg], Sequence[Arg]]:
        args: list[Arg] = [len(calls)]
        for _, call_args in calls:
            args += call_args[1:1 + self.per_call]
        keys, first_args = calls[0]
        return self._script, keys, [*args, *first_args[1 + self.per_call:]]


class AdmitMerge(_ScriptMerge):
    """Admissions on the same limits (same keys, kinds, capacities and windows) become one ``admit``
    call, decided in order; each gets its own 12 numbers of the reply."""

    per_call = 6  # lease id, ttl, prompt, completion, clamp, min completion

    def split(self, reply: Any, count: int) -> list[Any]:
        if len(reply) != count * ADMIT_REPLY:
            raise ValueError(f"admit answered {len(reply)} numbers for {count} requests")
        return [reply[index * ADMIT_REPLY:(index + 1) * ADMIT_REPLY] for index in range(count)]


class SettleMerge(_ScriptMerge):
    """Settlements of leases on the same limits become one ``settle`` call; each still gets its own
    ledger sequence number, in order."""

    per_call = 3  # lease id, delta, admitted_us

    def split(self, reply: Any, count: int) -> list[Any]:
        now, last_seq = int(reply[0]), int(reply[1])
        return [[now, last_seq - count + index] for index in range(1, count + 1)]


class RedisLimitStore:
    name = "redis"

    def __init__(self, redis: Redis, pipeline: RespPipeline | None = None) -> None:
        """``pipeline``: the lean connection for admissions and settlements (else redis-py's pipeline);
        it must reach the same Redis as ``redis``."""
        self._redis = redis
        self._pipeline = pipeline
        self._batch = ScriptBatcher(redis, pipeline=pipeline)
        self._admit = LuaScript(redis, lua.ADMIT)
        self._admit.merge = AdmitMerge(self._admit)
        self._settle = LuaScript(redis, lua.SETTLE)
        self._settle.merge = SettleMerge(self._settle)
        self._refresh = redis.register_script(lua.REFRESH)

    async def admit(self, plan: AdmitPlan) -> AdmitResult:
        return self.admit_result(await self.admit_later(plan))

    def admit_later(self, plan: AdmitPlan, on_orphan: Callable[[Any], None] | None = None
                    ) -> asyncio.Future[Any]:
        """Queue the admission for this loop turn's batch: the future of the script's raw reply (for
        ``admit_result``). No task or coroutine per admission. ``on_orphan``: given the reply (or
        error) if the future is cancelled before it comes (``ScriptBatcher.submit``)."""
        demand = plan.demand
        keys = [p.key for p in plan.limits] + [plan.ledger_key]
        args: list[str | int] = [1, plan.lease_id, plan.lease_ttl_us, demand.prompt_tokens,
                                 demand.completion_tokens, 1 if demand.clamp else 0,
                                 demand.min_completion_tokens, *_limit_args(plan.limits)]
        return self._batch.submit(self._admit, keys, args, on_orphan=on_orphan)

    @staticmethod
    def admit_result(raw: Any) -> AdmitResult:
        reply = [int(v) for v in raw]
        admitted, now, completion, wait, refused, seq = reply[:6]
        decision = Decision(admitted=admitted == 1, completion_tokens=completion,
                            retry_after_us=None if wait < 0 else wait, refused_index=refused)
        return AdmitResult(decision=decision, now_us=now, seq=seq, requests=_report(*reply[6:9]),
                           tokens=_report(*reply[9:12]))

    async def settle(self, plan: AdmitPlan, delta_tokens: int, admitted_us: int) -> SettleResult:
        now, seq = (int(v) for v in await self.settle_later(plan, delta_tokens, admitted_us))
        return SettleResult(now_us=now, seq=seq)

    def settle_later(self, plan: AdmitPlan, delta_tokens: int, admitted_us: int) -> asyncio.Future[Any]:
        """Queue the settlement to go out with the next admission (or within the batcher's linger):
        the future of the script's raw reply, ``[now_us, seq]``. No task or coroutine per settlement,
        for the callers that never wait for one (the response path)."""
        limits = plan.settled_limits
        keys = [p.key for p in limits] + [plan.ledger_key]
        args: list[str | int] = [1, plan.lease_id, delta_tokens, admitted_us, *_limit_args(limits)]
        return self._batch.submit(self._settle, keys, args, defer=True)

    async def refresh(self, plans: Sequence[AdmitPlan]) -> int:
        pairs = [(key, plan.lease_id, plan.lease_ttl_us) for plan in plans for key in plan.concurrency_keys]
        refreshed = 0
        for start in range(0, len(pairs), REFRESH_BATCH):
            batch = pairs[start:start + REFRESH_BATCH]
            ttl = max(ttl for _, _, ttl in batch)
            args: list[str | int] = [ttl, *(lease_id for _, lease_id, _ in batch)]
            refreshed += int(await self._refresh(keys=[key for key, _, _ in batch], args=args))
        return refreshed

    async def ledger(self, ledger_key: str) -> Ledger:
        charged, open_leases = await self._redis.hmget(ledger_key, ["charged", "open"])
        return Ledger(charged_tokens=int(charged or 0), open_leases=int(open_leases or 0))

    async def aclose(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.aclose()
