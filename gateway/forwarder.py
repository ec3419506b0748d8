"""The attempt loop: rank the candidates with the model's policy, open the engine stream on the first
that produces a first event, and fail over on retryable errors (connect, 5xx, overload, deadline to
the first token) without the client seeing anything.

Non-stream requests go to the engine whole (``EngineAdapter.complete``: one upstream request and one
answer instead of a stream of events, which measured as less than half the gateway's CPU per request,
benchmarks/results/overhead.json) and fail over on any retryable error, a failure mid-generation
included, since nothing has reached the client yet. ``whole_non_stream=False`` keeps them streamed
upstream and gathered here (per-event idle deadline and the TTFT histogram for them too)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from gateway.errors import GatewayError, ServiceUnavailableError, UpstreamError, UpstreamStreamError
from gateway.metrics import GatewayMetrics
from gateway.registry import Backend, Registry
from gateway.types import Completed, EventBatch, GenerateRequest, Usage
from policies.base import RoutingContext, RoutingPolicy
from policies.prefix_hash import canonical_chat

log = logging.getLogger("gateway.forwarder")


class Attempt:
    """An engine stream that produced its first events: the request is committed to ``backend``."""

    __slots__ = ("_batches", "_closed", "backend", "first", "started")

    def __init__(self, backend: Backend, first: EventBatch, batches: AsyncIterator[EventBatch],
                 started: float) -> None:
        self.backend = backend
        self.first = first
        self._batches = batches
        self._closed = False
        self.started = started

    async def batches(self) -> AsyncIterator[EventBatch]:
        """The stream's event batches, the first one included."""
        yield self.first
        async for batch in self._batches:
            yield batch

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.backend.in_flight -= 1
        aclose = getattr(self._batches, "aclose", None)
        if aclose is not None:
            await aclose()


class Completion:
    """A whole (non-stream) result aggregated from the engine's events."""

    __slots__ = ("backend", "finish_reason", "text", "usage")

    def __init__(self, backend: str, text: str, finish_reason: str | None, usage: Usage | None) -> None:
        self.backend = backend
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage


def prompt_text(request: GenerateRequest) -> str:
    """The prompt as routing and token estimates see it (chat messages canonicalized)."""
    return canonical_chat(request.messages) if request.messages is not None else request.prompt


def routing_context(request: GenerateRequest, routing_key: str | None) -> RoutingContext:
    return RoutingContext(model=request.model, prompt=prompt_text(request),
                          routing_key=routing_key or request.user)


class Forwarder:
    def __init__(self, registry: Registry, policies: Mapping[str, RoutingPolicy],
                 policy_names: Mapping[str, str], metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.perf_counter, *, whole_non_stream: bool = True) -> None:
        self._registry = registry
        self._whole_non_stream = whole_non_stream
        self._policies = policies
        self._policy_names = policy_names
        self._metrics = metrics
        self._clock = clock

    def _rank(self, request: GenerateRequest, context: RoutingContext,
              exclude: set[str]) -> tuple[list[Backend], RoutingPolicy]:
        candidates = [c for c in self._registry.candidates(request.model) if c.name not in exclude]
        policy = self._policies[request.model]
        ranking = policy.rank(candidates, context)
        self._metrics.decisions.labels(request.model, self._policy_names[request.model],
                                       ranking.branch).inc()
        self._metrics.predicted_hit_blocks.labels(request.model).observe(ranking.predicted_hit_blocks)
        return [self._registry[c.name] for c in ranking.order], policy

    async def open(self, request: GenerateRequest, *, routing_key: str | None = None,
                   exclude: set[str] | None = None) -> Attempt:
        """Walk the policy's order until one backend yields a first event."""
        context = routing_context(request, routing_key)
        tried = set(exclude or ())
        order, policy = self._rank(request, context, tried)
        last_error: GatewayError | None = None
        for backend in order:
            started = self._clock()
            backend.in_flight += 1
            events = backend.adapter.stream(request).__aiter__()
            try:
                first = await events.__anext__()
            except (GatewayError, StopAsyncIteration) as exc:
                backend.in_flight -= 1
                await _aclose(events)
                last_error = exc if isinstance(exc, GatewayError) else UpstreamError("engine sent no events")
                self._failed(backend, request, last_error)
                tried.add(backend.name)
                continue
            except BaseException:
                backend.in_flight -= 1
                await _aclose(events)
                raise
            backend.record_success()
            policy.record(backend.name, context)
            self._metrics.ttft.labels(request.model, backend.name).observe(self._clock() - started)
            return Attempt(backend, first, events, started)
        raise _exhausted(request, last_error)

    async def complete(self, request: GenerateRequest, *, routing_key: str | None = None) -> Completion:
        """Run a non-stream request; a failure mid-generation restarts it on the next backend."""
        if not self._whole_non_stream:
            return await self._complete_streamed(request, routing_key)
        context = routing_context(request, routing_key)
        order, policy = self._rank(request, context, set())
        last_error: GatewayError | None = None
        for backend in order:
            backend.in_flight += 1
            try:
                whole = await backend.adapter.complete(request)
            except GatewayError as error:
                last_error = error
                self._failed(backend, request, error)
                continue
            finally:
                backend.in_flight -= 1
            backend.record_success()
            policy.record(backend.name, context)
            return Completion(backend.name, whole.text, whole.finish_reason, whole.usage)
        raise _exhausted(request, last_error)

    async def _complete_streamed(self, request: GenerateRequest, routing_key: str | None) -> Completion:
        tried: set[str] = set()
        while True:
            attempt = await self.open(request, routing_key=routing_key, exclude=tried)
            try:
                whole = await Completed.from_batches(attempt.batches())
            except UpstreamStreamError as exc:
                self._failed(attempt.backend, request, exc)
                tried.add(attempt.backend.name)
                if len(tried) >= len(self._registry.serving(request.model)):
                    raise UpstreamError(f"every backend failed mid-generation: {exc.message}") from None
                continue
            finally:
                await attempt.close()
            return Completion(attempt.backend.name, whole.text, whole.finish_reason, whole.usage)

    def _failed(self, backend: Backend, request: GenerateRequest, error: GatewayError) -> None:
        """Count a failed attempt; re-raise ``error`` unless the request may fail over."""
        self._metrics.upstream_errors.labels(backend.name, error.code).inc()
        if not error.retryable:
            raise error
        backend.record_failure()
        self._metrics.failovers.labels(request.model, error.code).inc()
        log.info("attempt on %s failed (%s); failing over", backend.name, error.code)


def _exhausted(request: GenerateRequest, last_error: GatewayError | None) -> GatewayError:
    """What to raise when no backend answered: the last attempt's error, or no backend at all."""
    if last_error is not None:
        return last_error
    return ServiceUnavailableError(f"no backend available for model `{request.model}`")


async def _aclose(events: AsyncIterator[EventBatch]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
