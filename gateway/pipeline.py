"""One request's way through the gateway, the same for every dialect: authenticate, check the model,
admit against the tenant's limits (reserving tokens), forward with failover, and settle the lease
with the engine's real usage exactly once, whether the response completes, fails or the client
leaves. The edge only parses and renders.

Where the tenancy component allows it (``Admission.speculate``), the engine request starts while the
limit store decides (in the request's own task; the decision is a future of the store's reply), and is
cancelled if the store refuses or fails: nothing reaches the client before the admission, and a refusal
answers exactly as without speculation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from gateway.forwarder import Attempt, Completion, Forwarder, prompt_text
from gateway.loop_bound import LoopRef
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry
from gateway.tenancy import Admission, Lease, Principal, estimate_tokens
from gateway.types import GenerateRequest, Usage

ROUTING_KEY_HEADER = "x-session-id"
_Result = TypeVar("_Result", Attempt, Completion)

# Called once when a stream ends: backend, engine usage (None if never reported), outcome, and the
# number of text chunks relayed (the usage estimate when the engine reported none).
OnDone = Callable[[str, Usage | None, str, int], Awaitable[None]]


class Pipeline:
    def __init__(self, registry: Registry, forwarder: Forwarder, admission: Admission,
                 metrics: GatewayMetrics) -> None:
        self._registry = registry
        self._forwarder = forwarder
        self._admission = admission
        self._metrics = metrics
        self._loop = LoopRef()

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return await self._admission.authenticate(headers)

    async def admit(self, principal: Principal, request: GenerateRequest) -> Lease:
        """404 for a model nobody serves, 403 for one the tenant may not use, 429 over a limit; on
        success ``request.max_tokens`` may be lowered to what the tenant has left (clamping)."""
        self._check(principal, request)
        prompt_tokens = estimate_tokens(prompt_text(request))
        return await self._reserve(principal, request, prompt_tokens, speculative=False)

    def _check(self, principal: Principal, request: GenerateRequest) -> None:
        self._registry.serving(request.model)
        self._admission.authorize_model(principal, request.model)

    async def _reserve(self, principal: Principal, request: GenerateRequest, prompt_tokens: int, *,
                       speculative: bool) -> Lease:
        lease = await self._admission.admit(principal, request.model, prompt_tokens, request.max_tokens,
                                            speculative=speculative)
        if lease.max_tokens is not None:
            request.max_tokens = lease.max_tokens
        return lease

    async def admit_and_complete(self, principal: Principal, request: GenerateRequest,
                                 headers: Mapping[str, str], dialect: str,
                                 started: float) -> tuple[Lease, Completion]:
        """``admit`` then ``complete``, the engine request started beside the admission when allowed."""
        routing_key = headers.get(ROUTING_KEY_HEADER)

        def forward() -> Coroutine[Any, Any, Completion]:
            return self._forwarder.complete(request, routing_key=routing_key)

        lease, completion = await self._admit_and_forward(principal, request, forward, _no_disposal)
        on_done = self.on_done(request, dialect, lease, started)
        if completion is None:
            return lease, await self.complete(request, lease, headers, on_done)
        await on_done(completion.backend, completion.usage, "ok", 0)
        return lease, completion

    async def admit_and_open(self, principal: Principal, request: GenerateRequest, headers: Mapping[str, str],
                             dialect: str, started: float) -> tuple[Lease, OnDone, Attempt]:
        """``admit`` then ``open``, the engine stream opened beside the admission when allowed."""
        routing_key = headers.get(ROUTING_KEY_HEADER)

        def forward() -> Coroutine[Any, Any, Attempt]:
            return self._forwarder.open(request, routing_key=routing_key)

        lease, attempt = await self._admit_and_forward(principal, request, forward, _close_attempt)
        on_done = self.on_done(request, dialect, lease, started)
        if attempt is None:
            return lease, on_done, await self.open(request, lease, headers)
        return lease, on_done, attempt

    async def _admit_and_forward(self, principal: Principal, request: GenerateRequest,
                                 forward: Callable[[], Coroutine[Any, Any, _Result]],
                                 dispose: Callable[[_Result], Awaitable[None]]
                                 ) -> tuple[Lease, _Result | None]:
        """The lease, and ``forward``'s result when the admission allowed speculation (None: forward
        after the admission, as ``admit`` callers do)."""
        self._check(principal, request)
        asked = request.max_tokens
        prompt_tokens = estimate_tokens(prompt_text(request))  # a chat prompt is canonicalized: once
        decided = None
        if self._admission.speculate(principal, request.model, prompt_tokens, asked):
            decided = self._admission.admit_soon(principal, request.model, prompt_tokens, asked)
        if decided is None:  # not speculative, or the shared store is down (``admit`` probes it)
            return await self._reserve(principal, request, prompt_tokens, speculative=False), None
        return await self._forward_beside(decided, request, forward, dispose)

    async def _forward_beside(self, decided: asyncio.Future[Lease], request: GenerateRequest,
                              forward: Callable[[], Coroutine[Any, Any, _Result]],
                              dispose: Callable[[_Result], Awaitable[None]]) -> tuple[Lease, _Result | None]:
        """Run ``forward`` in this task while ``decided`` comes: (lease, its result), or (lease, None)
        when the lease lowered max_tokens (forward again). A refusal (or the store's failure) stops the
        forward at once and is raised as without speculation; so it is when the engine failed first.

        Why in this task: the admission is only a future of Redis' reply, and a task for the engine
        request cost a task, its steps and a loop turn per request."""
        task = asyncio.current_task(self._loop.get())
        assert task is not None
        asked = request.max_tokens
        veto = _Veto(task, asked)
        decided.add_done_callback(veto)
        try:
            result = await forward()
        except asyncio.CancelledError:
            veto.armed = False
            if not veto.fired or task.uncancel() > 0:  # not (only) the veto's cancellation: the client left
                await _drop(decided)
                raise
            return await _granted(decided, request), None  # refused (raises), or max_tokens lowered
        except BaseException:
            veto.armed = False
            lease = await _granted(decided, request)  # a refusal answers before the engine's failure
            await lease.release_unused()
            raise
        veto.armed = False
        try:
            lease = await _granted(decided, request)
        except BaseException:
            await dispose(result)
            raise
        if request.max_tokens != asked:  # the engine was asked for more than the lease grants: ask again
            await dispose(result)
            return lease, None
        return lease, result

    def on_done(self, request: GenerateRequest, dialect: str, lease: Lease, started: float) -> OnDone:
        metrics = self._metrics

        async def done(backend: str, usage: Usage | None, outcome: str, chunks: int) -> None:
            metrics.requests.labels(request.model, backend, dialect, outcome).inc()
            metrics.duration.labels(request.model, dialect).observe(time.perf_counter() - started)
            if usage is not None:
                metrics.tokens.labels(request.model, backend, "prompt").inc(usage.prompt_tokens)
                metrics.tokens.labels(request.model, backend, "completion").inc(usage.completion_tokens)
                await lease.settle(usage.prompt_tokens, usage.completion_tokens)
            else:
                await lease.settle(estimate_tokens(prompt_text(request)), chunks)
        return done

    async def open(self, request: GenerateRequest, lease: Lease, headers: Mapping[str, str]) -> Attempt:
        """Open the engine stream; if no backend yields a first event nothing was used: release."""
        try:
            return await self._forwarder.open(request, routing_key=headers.get(ROUTING_KEY_HEADER))
        except BaseException:
            await lease.release_unused()
            raise

    async def complete(self, request: GenerateRequest, lease: Lease, headers: Mapping[str, str],
                       on_done: OnDone) -> Completion:
        try:
            result = await self._forwarder.complete(request, routing_key=headers.get(ROUTING_KEY_HEADER))
        except BaseException:
            await lease.release_unused()
            raise
        await on_done(result.backend, result.usage, "ok", 0)
        return result


class _Veto:
    """Cancels the task forwarding a speculative request when its admission refuses it, fails, or
    lowers max_tokens below what the engine was asked for (``fired`` says it did)."""

    __slots__ = ("_asked", "_task", "armed", "fired")

    def __init__(self, task: asyncio.Task[Any], asked: int | None) -> None:
        self._task = task
        self._asked = asked
        self.armed = True
        self.fired = False

    def __call__(self, decided: asyncio.Future[Lease]) -> None:
        if not self.armed or decided.cancelled():
            return
        if decided.exception() is None:
            granted = decided.result().max_tokens
            if granted is None or granted == self._asked:
                return
        self.armed = False
        self.fired = True
        self._task.cancel()


async def _granted(decided: asyncio.Future[Lease], request: GenerateRequest) -> Lease:
    """The lease (waiting for it if need be), with the request's max_tokens set to what it grants."""
    lease = await decided
    if lease.max_tokens is not None:
        request.max_tokens = lease.max_tokens
    return lease


async def _drop(decided: asyncio.Future[Lease]) -> None:
    """The request is gone: cancel an undecided admission (the store's grant is then refunded) or
    release a decided one."""
    if not decided.done():
        decided.cancel()
    elif not decided.cancelled() and decided.exception() is None:
        await decided.result().release_unused()


async def _no_disposal(completion: Completion) -> None:
    """A whole answer holds no connection: nothing to close."""


async def _close_attempt(attempt: Attempt) -> None:
    await attempt.close()
