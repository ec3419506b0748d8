"""Shared types between the gateway and the engine adapters.

This module imports nothing from the project (adapters in ``backends/`` may import it): the one internal
request every client dialect is parsed into, the event stream every adapter yields, the normalized load
snapshot an adapter scrapes, and the adapter protocol the composition root wires up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec

RequestKind = Literal["chat", "completion"]


class GenerateRequest(msgspec.Struct, kw_only=True):
    """One generation request, whatever dialect the client spoke."""

    kind: RequestKind
    model: str
    prompt: str = ""
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    # Engine extensions passed through untouched (ignore_eos, top_k, min_tokens, ...).
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    # Chat resume: the last message is a partial assistant turn that the engine must continue.
    continue_final_message: bool = False
    # Per-request fault injection for the sim engine, set only by trusted test/admin paths.
    fault: str | None = None


class Delta(msgspec.Struct, kw_only=True):
    """One upstream chunk: relayed to the client one to one."""

    text: str = ""
    role: str | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct, kw_only=True):
    """Token usage as the engine reported it."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None


StreamEvent = Delta | Usage
# The events one read of an engine's answer completed, in order; never empty. Streams travel in batches so
# that events which arrived together leave together: one client write instead of one per event.
EventBatch = list[StreamEvent]


class Completed(msgspec.Struct, kw_only=True):
    """An engine's whole answer to a non-stream request."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None

    @classmethod
    async def from_batches(cls, batches: AsyncIterator[EventBatch]) -> Completed:
        """The answer a stream's events add up to (the text joined, the last finish reason, the usage)."""
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        async for batch in batches:
            for event in batch:
                if isinstance(event, Delta):
                    parts.append(event.text)
                    finish_reason = event.finish_reason or finish_reason
                else:
                    usage = event
        return cls(text="".join(parts), finish_reason=finish_reason, usage=usage)


class BackendLoad(msgspec.Struct, kw_only=True):
    """An engine's own numbers, normalized across vLLM, TGI and sim (counters are cumulative)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    preemptions: float | None = None
    block_size: int | None = None
    num_blocks: int | None = None
    max_concurrent: int | None = None


class EngineAdapter(Protocol):
    """What the gateway needs from one engine. One instance per backend."""

    def stream(self, request: GenerateRequest) -> AsyncIterator[EventBatch]:
        """Yield the engine's events for ``request`` (streamed upstream, usage always asked), in batches:
        each batch holds the events one read of the engine's answer completed, so events that arrived
        together can be relayed together.

        Before the first event, failures raise a ``GatewayError`` whose ``retryable`` says whether
        the gateway may fail over. After the first event a failure raises ``UpstreamStreamError``.
        Closing the iterator early closes the upstream connection (the engine aborts the request).
        """
        ...

    async def complete(self, request: GenerateRequest) -> Completed:
        """The engine's whole answer to a non-stream ``request``, in one upstream request where the
        engine's non-stream answer has everything (usage included), else gathered from its stream.

        Failures raise a ``GatewayError``; ``retryable`` says whether the gateway may fail over (nothing
        has reached the client). Cancelling the call closes the upstream connection.
        """
        ...

    async def health(self) -> bool:
        """True when the engine answers its health endpoint."""
        ...

    async def load(self) -> BackendLoad:
        """Scrape the engine's metrics into a ``BackendLoad``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
