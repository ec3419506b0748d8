"""One request's way through the gateway, the same for every dialect: authenticate, check the model,
admit against the tenant's limits (reserving tokens), forward with failover, and settle the lease
with the engine's real usage exactly once, whether the response completes, fails or the client
leaves. The edge only parses and renders."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from gateway.forwarder import Attempt, Completion, Forwarder, prompt_text
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry
from gateway.tenancy import Admission, Lease, Principal, estimate_tokens
from gateway.types import GenerateRequest, Usage

ROUTING_KEY_HEADER = "x-session-id"

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

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return await self._admission.authenticate(headers)

    async def admit(self, principal: Principal, request: GenerateRequest) -> Lease:
        """404 for a model nobody serves, 403 for one the tenant may not use, 429 over a limit; on
        success ``request.max_tokens`` may be lowered to what the tenant has left (clamping)."""
        self._registry.serving(request.model)
        self._admission.authorize_model(principal, request.model)
        lease = await self._admission.admit(principal, request.model, estimate_tokens(prompt_text(request)),
                                            request.max_tokens)
        if lease.max_tokens is not None:
            request.max_tokens = lease.max_tokens
        return lease

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
