"""One request's way through the gateway, the same for every dialect: authenticate, check the model,
admit against the tenant's limits (reserving tokens), forward with failover, and settle the lease
with the engine's real usage exactly once, whether the response completes, fails or the client
leaves. The edge only parses and renders.

Where the tenancy component allows it (``Admission.speculate``), the engine request starts while the
limit store decides, and is cancelled if the store refuses or fails: nothing reaches the client before
the admission, and a refusal answers exactly as without speculation."""

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
# A whole answer's ``OnDone`` with its arguments bound: awaited once the answer has been sent.
Record = Callable[[], Awaitable[None]]


class Pipeline:
    def __init__(self, registry: Registry, forwarder: Forwarder, admission: Admission,
                 metrics: GatewayMetrics) -> None:
        self._registry = registry
        self._forwarder = forwarder
        self._admission = admission
        self._metrics = metrics
        self._abandoned: set[asyncio.Task[None]] = set()
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
                                 started: float) -> tuple[Lease, Completion, Record]:
        """``admit`` then ``complete``, the engine request started beside the admission when allowed. The
        caller answers the client, then awaits the returned ``Record`` (metrics and the lease's
        settlement) exactly once, also when answering fails: that work is off the answer's path."""
        routing_key = headers.get(ROUTING_KEY_HEADER)
        lease, result = await self._admit_beside(
            principal, request, lambda: self._forwarder.complete(request, routing_key=routing_key))
        if result is None:
            completion = await self.complete(request, lease, headers)
        else:
            try:
                completion = await result
            except BaseException:
                self._abandon(result)
                await lease.release_unused()
                raise
        on_done = self.on_done(request, dialect, lease, started)

        def record() -> Awaitable[None]:
            return on_done(completion.backend, completion.usage, "ok", 0)
        return lease, completion, record

    async def admit_and_open(self, principal: Principal, request: GenerateRequest, headers: Mapping[str, str],
                             dialect: str, started: float) -> tuple[Lease, OnDone, Attempt]:
        """``admit`` then ``open``, the engine stream opened beside the admission when allowed."""
        routing_key = headers.get(ROUTING_KEY_HEADER)
        lease, result = await self._admit_beside(
            principal, request, lambda: self._forwarder.open(request, routing_key=routing_key))
        on_done = self.on_done(request, dialect, lease, started)
        if result is None:
            return lease, on_done, await self.open(request, lease, headers)
        try:
            attempt = await result
        except BaseException:
            self._abandon(result)
            await lease.release_unused()
            raise
        return lease, on_done, attempt

    async def _admit_beside(self, principal: Principal, request: GenerateRequest,
                            forward: Callable[[], Coroutine[Any, Any, _Result]]
                            ) -> tuple[Lease, asyncio.Task[_Result] | None]:
        """The lease, and the engine request already running when the admission allowed speculation
        (None: forward after the admission, as ``admit`` callers do)."""
        self._check(principal, request)
        asked = request.max_tokens
        prompt_tokens = estimate_tokens(prompt_text(request))  # a chat prompt is canonicalized: once
        if not self._admission.speculate(principal, request.model, prompt_tokens, asked):
            return await self._reserve(principal, request, prompt_tokens, speculative=False), None
        running = self._loop.create_task(forward())
        try:
            lease = await self._reserve(principal, request, prompt_tokens, speculative=True)
        except BaseException:
            self._abandon(running)
            raise
        if request.max_tokens != asked:  # the engine was asked for more than the lease grants: ask again
            self._abandon(running)
            return lease, None
        return lease, running

    def _abandon(self, running: asyncio.Task[Any]) -> None:
        """Stop a speculative engine request nobody will read; close its stream if it already opened."""
        if running.done():
            self._dispose(running)
        else:
            running.cancel()
            running.add_done_callback(self._dispose)

    def _dispose(self, running: asyncio.Task[Any]) -> None:
        if running.cancelled() or running.exception() is not None:  # retrieved: nobody else will
            return
        attempt = running.result()
        if isinstance(attempt, Attempt):
            closing = self._loop.create_task(attempt.close())
            self._abandoned.add(closing)
            closing.add_done_callback(self._abandoned.discard)

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

    async def complete(self, request: GenerateRequest, lease: Lease,
                       headers: Mapping[str, str]) -> Completion:
        """Run a non-stream request after its admission; if it fails nothing was used: release."""
        try:
            return await self._forwarder.complete(request, routing_key=headers.get(ROUTING_KEY_HEADER))
        except BaseException:
            await lease.release_unused()
            raise
