"""Sans-IO parsers of OpenAI-shaped answers (vLLM, TGI's Messages API): a stream's SSE data -> Delta /
Usage, and a whole non-stream body -> ``Completed`` (``parse_whole``).

One chunk with a choice becomes exactly one ``Delta`` (chat's first ``{"role": "assistant",
"content": ""}`` chunk included); the finish reason stays on the Delta that carried it. Usage may come
in its own ``"choices": []`` chunk (vLLM) or ride on a choice chunk; the latest one is kept and handed
out once by ``finish()`` when the stream has ended. ``[DONE]`` ends the stream. An ``{"error": ...}``
object raises ``EngineReportedError`` and anything unparsable raises ``MalformedEventError``, so the
adapter can decide between a fail-over error and a mid-stream error.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from backends.http_errors import EngineReportedError, MalformedEventError
from backends.sse import SseEvent
from gateway.types import Completed, Delta, StreamEvent, Usage


class _ChatDelta(msgspec.Struct):
    role: str | None = None
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _ChatDelta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_details: _PromptDetails | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: Any = None


class _Message(msgspec.Struct):
    content: str | None = None


class _WholeChoice(msgspec.Struct):
    text: str | None = None
    message: _Message | None = None
    finish_reason: str | None = None


class _Whole(msgspec.Struct):
    choices: list[_WholeChoice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: Any = None


_Body = TypeVar("_Body", _Chunk, _Whole)
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_whole_decoder = msgspec.json.Decoder(_Whole)
_any_decoder = msgspec.json.Decoder()


class OpenAiStreamParser:
    """Feed it each SSE event of one response; it returns the events to relay."""

    __slots__ = ("done", "finished", "usage")

    def __init__(self) -> None:
        self.done = False  # "[DONE]" seen
        self.finished = False  # a finish_reason seen
        self.usage: Usage | None = None

    @property
    def complete(self) -> bool:
        """The stream said it was over (the connection ending early is then no error)."""
        return self.done or self.finished

    @property
    def ended(self) -> bool:
        """Nothing more will come: stop reading."""
        return self.done

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return []
        if event.event == "error":
            raise EngineReportedError(_error_payload(data))
        chunk = _decode(_chunk_decoder, data, "chunk")
        if self.done:
            raise MalformedEventError("chunk after [DONE]")
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        finish_reason = choice.finish_reason or None  # TGI's completion chunks say "" until the end
        if finish_reason is not None:
            self.finished = True
        if choice.delta is not None:
            return [Delta(text=choice.delta.content or "", role=choice.delta.role,
                          finish_reason=finish_reason)]
        return [Delta(text=choice.text or "", finish_reason=finish_reason)]

    def finish(self) -> list[StreamEvent]:
        """Events due once the stream has ended (the usage, once)."""
        usage, self.usage = self.usage, None
        return [usage] if usage is not None else []


def parse_whole(raw: bytes) -> Completed:
    """A whole (non-stream) chat or text completion body: the first choice's text, its finish reason,
    the usage. An ``{"error": ...}`` body raises ``EngineReportedError``, garbage or no choice
    ``MalformedEventError``."""
    whole = _decode(_whole_decoder, raw, "answer")
    if not whole.choices:
        raise MalformedEventError(f"an answer without a choice: {raw[:200]!r}")
    choice = whole.choices[0]
    text = choice.message.content if choice.message is not None else choice.text
    return Completed(text=text or "", finish_reason=choice.finish_reason or None,
                     usage=_usage(whole.usage) if whole.usage is not None else None)


def _decode(decoder: msgspec.json.Decoder[_Body], data: str | bytes, what: str) -> _Body:
    """``data`` decoded; garbage raises ``MalformedEventError``, an ``{"error": ...}`` object
    ``EngineReportedError``."""
    try:
        body = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedEventError(f"unparsable {what}: {exc}: {data[:200]!r}") from None
    if body.error is not None:
        raise EngineReportedError(_error_payload(data))
    return body


def _usage(usage: _Usage) -> Usage:
    details = usage.prompt_tokens_details
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 cached_tokens=details.cached_tokens if details is not None else None)


def _error_payload(data: str | bytes) -> dict[str, Any]:
    try:
        payload = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return {"error": data}
    return payload if isinstance(payload, dict) else {"error": payload}
