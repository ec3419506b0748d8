"""Streaming relays: turn a committed engine stream into the client's SSE bytes for each dialect.

The events of one engine batch (one read of the engine's answer) leave as one piece of bytes, each
still its own SSE event: a client write per read, not per event, so an engine that sends faster than
the gateway writes (several events per read) costs fewer system calls. The last piece is a
``FinalChunk``.

Every relay closes the upstream attempt in ``finally`` (client disconnect cancels the generator, which
closes the engine connection and returns the in-flight count), reports the outcome to a callback, and
turns an engine failure after the first byte into the dialect's error event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway.errors import GatewayError
from gateway.forwarder import Attempt
from gateway.metrics import GatewayMetrics
from gateway.pipeline import OnDone
from gateway.render_openai import DONE, OpenAIRenderer
from gateway.render_text import (
    native_delta,
    native_error,
    native_final,
    tgi_error_event,
    tgi_finish_reason,
    tgi_stream_token,
)
from gateway.types import Delta, GenerateRequest, Usage


class FinalChunk(bytes):
    """A relay's last bytes: the data plane sends them with the end of the body, in one write where
    uvicorn would write the chunked body's terminator on its own, then closes the relay, whose ``finally``
    closes the attempt and reports the outcome (off the answer's path, as for a whole answer). Nothing
    follows them."""


class _ChunkClock:
    """Observes the gap between relayed chunks (inter-token latency at the gateway)."""

    __slots__ = ("_last", "_observe")

    def __init__(self, metrics: GatewayMetrics, model: str) -> None:
        self._observe = metrics.itl.labels(model).observe
        self._last = 0.0

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self._observe(now - self._last)
        self._last = now


async def relay_openai(attempt: Attempt, request: GenerateRequest, renderer: OpenAIRenderer,
                       metrics: GatewayMetrics, on_done: OnDone) -> AsyncIterator[bytes]:
    """OpenAI SSE: one chunk per engine event. The usage chunk (when asked for) leaves with ``[DONE]`` and
    the end of the body: the usage is the stream's last event, handed out once the engine's stream ended."""
    usage: Usage | None = None
    outcome = "cancelled"
    chunks = 0
    clock = _ChunkClock(metrics, request.model)
    try:
        try:
            async for batch in attempt.batches():
                out: list[bytes] = []
                for event in batch:
                    if isinstance(event, Delta):
                        clock.tick()
                        chunks += 1
                        out.append(renderer.chunk(event))
                    else:
                        usage = event
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            outcome = "ok"
            last = DONE
        except GatewayError as exc:
            outcome = "stream_error"
            last = renderer.error_event(exc) + DONE
        yield FinalChunk(renderer.usage_chunk(usage) + last if usage is not None and request.include_usage
                         else last)
    finally:
        await attempt.close()
        await on_done(attempt.backend.name, usage, outcome, chunks)


async def relay_native(attempt: Attempt, request: GenerateRequest, on_done: OnDone) -> AsyncIterator[bytes]:
    """Native SSE: one event per text delta; the last carries ``finish_reason`` and ``tokens``."""
    usage: Usage | None = None
    finish_reason: str | None = None
    outcome = "cancelled"
    chunks = 0
    try:
        try:
            async for batch in attempt.batches():
                out: list[bytes] = []
                for event in batch:
                    if isinstance(event, Usage):
                        usage = event
                        continue
                    finish_reason = event.finish_reason or finish_reason
                    if event.text:
                        chunks += 1
                        out.append(native_delta(event.text))
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            outcome = "ok"
            final = FinalChunk(native_final("", usage.completion_tokens if usage else 0, finish_reason))
        except GatewayError as exc:
            outcome = "stream_error"
            final = FinalChunk(native_error(exc))
        yield final
    finally:
        await attempt.close()
        await on_done(attempt.backend.name, usage, outcome, chunks)


async def relay_tgi(attempt: Attempt, request: GenerateRequest, on_done: OnDone) -> AsyncIterator[bytes]:
    """TGI ``/generate_stream``: one token event per delta, relayed at once; the delta that carries
    the finish reason is held until usage arrives (right behind it) so that the last event carries
    ``generated_text`` and ``details`` as TGI's does."""
    usage: Usage | None = None
    finish_reason: str | None = None
    last_text = ""
    index = 0
    parts: list[str] = []
    outcome = "cancelled"
    try:
        try:
            async for batch in attempt.batches():
                out: list[bytes] = []
                for event in batch:
                    if isinstance(event, Usage):
                        usage = event
                        continue
                    parts.append(event.text)
                    if event.finish_reason is not None:
                        finish_reason = event.finish_reason
                        last_text = event.text
                    elif event.text:
                        index += 1
                        out.append(tgi_stream_token(index, event.text))
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            outcome = "ok"
            details = {
                "finish_reason": tgi_finish_reason(finish_reason, request.stop, ""),
                "generated_tokens": usage.completion_tokens if usage else index,
                "input_length": usage.prompt_tokens if usage else 0,
                "seed": request.seed,
            }
            final = FinalChunk(tgi_stream_token(index + 1, last_text, generated_text="".join(parts),
                                                details=details, special=not last_text))
        except GatewayError as exc:
            outcome = "stream_error"
            final = FinalChunk(tgi_error_event(exc))
        yield final
    finally:
        await attempt.close()
        await on_done(attempt.backend.name, usage, outcome, index)
