"""Streaming relays: turn a committed engine stream into the client's SSE bytes for each dialect.

The events of one engine batch (one read of the engine's answer) leave as one piece of bytes, each
still its own SSE event: a client write per read, not per event, so an engine that sends faster than
the gateway writes (several events per read) costs fewer system calls. The last piece is a
``FinalChunk``.

One driver (``_relay``) does this for every dialect, which only renders (``_OpenAI``, ``_Native``,
``_Tgi``). It closes the upstream attempt in ``finally`` (client disconnect cancels the generator, which
closes the engine connection and returns the in-flight count), reports the outcome to a callback, and
turns an engine failure after the first byte into the dialect's error event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

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


class _Dialect(Protocol):
    """How one client dialect renders a stream; ``_relay`` drives it."""

    @property
    def chunks(self) -> int:
        """Text chunks relayed so far (the completion estimate when the engine reports no usage)."""
        ...

    def delta(self, delta: Delta) -> bytes | None:
        """The bytes relaying ``delta`` now, if any."""
        ...

    def last(self, usage: Usage | None) -> bytes:
        """The stream's last bytes once the engine's stream is complete."""
        ...

    def failed(self, usage: Usage | None, error: GatewayError) -> bytes:
        """The stream's last bytes when the engine failed after the first byte."""
        ...


async def _relay(attempt: Attempt, dialect: _Dialect, on_done: OnDone) -> AsyncIterator[bytes]:
    """One piece of bytes per engine batch that renders to any, then a ``FinalChunk``; the attempt is
    closed and the outcome reported when the relay is closed (after the last piece) or cancelled."""
    usage: Usage | None = None
    outcome = "cancelled"
    try:
        try:
            async for batch in attempt.batches():
                out: list[bytes] = []
                for event in batch:
                    if isinstance(event, Usage):
                        usage = event
                    elif (piece := dialect.delta(event)) is not None:
                        out.append(piece)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            outcome = "ok"
            last = dialect.last(usage)
        except GatewayError as exc:
            outcome = "stream_error"
            last = dialect.failed(usage, exc)
        yield FinalChunk(last)
    finally:
        await attempt.close()
        await on_done(attempt.backend.name, usage, outcome, dialect.chunks)


class _OpenAI:
    """OpenAI SSE: one chunk per engine event. The usage chunk (when asked for) leaves with ``[DONE]`` and
    the end of the body: the usage is the stream's last event, handed out once the engine's stream ended."""

    __slots__ = ("_clock", "_include_usage", "_renderer", "chunks")

    def __init__(self, request: GenerateRequest, renderer: OpenAIRenderer, metrics: GatewayMetrics) -> None:
        self._renderer = renderer
        self._include_usage = request.include_usage
        self._clock = _ChunkClock(metrics, request.model)
        self.chunks = 0

    def delta(self, delta: Delta) -> bytes:
        self._clock.tick()
        self.chunks += 1
        return self._renderer.chunk(delta)

    def last(self, usage: Usage | None) -> bytes:
        return self._usage_chunk(usage) + DONE

    def failed(self, usage: Usage | None, error: GatewayError) -> bytes:
        return self._usage_chunk(usage) + self._renderer.error_event(error) + DONE

    def _usage_chunk(self, usage: Usage | None) -> bytes:
        return self._renderer.usage_chunk(usage) if usage is not None and self._include_usage else b""


class _Native:
    """Native SSE: one event per text delta; the last carries ``finish_reason`` and ``tokens``."""

    __slots__ = ("_finish_reason", "chunks")

    def __init__(self) -> None:
        self._finish_reason: str | None = None
        self.chunks = 0

    def delta(self, delta: Delta) -> bytes | None:
        self._finish_reason = delta.finish_reason or self._finish_reason
        if not delta.text:
            return None
        self.chunks += 1
        return native_delta(delta.text)

    def last(self, usage: Usage | None) -> bytes:
        return native_final("", usage.completion_tokens if usage else 0, self._finish_reason)

    def failed(self, usage: Usage | None, error: GatewayError) -> bytes:
        return native_error(error)


class _Tgi:
    """TGI ``/generate_stream``: one token event per delta, relayed at once; the delta that carries the
    finish reason is held for the last event, which carries ``generated_text`` and ``details`` as TGI's
    does."""

    __slots__ = ("_finish_reason", "_last_text", "_parts", "_request", "chunks")

    def __init__(self, request: GenerateRequest) -> None:
        self._request = request
        self._finish_reason: str | None = None
        self._last_text = ""
        self._parts: list[str] = []
        self.chunks = 0  # also the index of the last token event sent

    def delta(self, delta: Delta) -> bytes | None:
        self._parts.append(delta.text)
        if delta.finish_reason is not None:
            self._finish_reason = delta.finish_reason
            self._last_text = delta.text
            return None
        if not delta.text:
            return None
        self.chunks += 1
        return tgi_stream_token(self.chunks, delta.text)

    def last(self, usage: Usage | None) -> bytes:
        request = self._request
        details = {
            "finish_reason": tgi_finish_reason(self._finish_reason, request.stop, ""),
            "generated_tokens": usage.completion_tokens if usage else self.chunks,
            "input_length": usage.prompt_tokens if usage else 0,
            "seed": request.seed,
        }
        return tgi_stream_token(self.chunks + 1, self._last_text, generated_text="".join(self._parts),
                                details=details, special=not self._last_text)

    def failed(self, usage: Usage | None, error: GatewayError) -> bytes:
        return tgi_error_event(error)


def relay_openai(attempt: Attempt, request: GenerateRequest, renderer: OpenAIRenderer,
                 metrics: GatewayMetrics, on_done: OnDone) -> AsyncIterator[bytes]:
    return _relay(attempt, _OpenAI(request, renderer, metrics), on_done)


def relay_native(attempt: Attempt, request: GenerateRequest, on_done: OnDone) -> AsyncIterator[bytes]:
    return _relay(attempt, _Native(), on_done)


def relay_tgi(attempt: Attempt, request: GenerateRequest, on_done: OnDone) -> AsyncIterator[bytes]:
    return _relay(attempt, _Tgi(request), on_done)
