"""Sans-IO parsers of TGI's two streams into the gateway's events.

- ``TgiTokenStreamParser``: native ``/generate_stream``: one ``{"index", "token", "generated_text",
  "details"}`` event per token, no ``[DONE]``; the last event carries ``details`` (``finish_reason``
  ``length``/``eos_token``/``stop_sequence``, ``generated_tokens``, ``input_length``), which become
  the Delta's finish reason and the ``Usage``. Special tokens (``</s>``) relay as empty text.
- ``TgiChatStreamParser``: the Messages API, OpenAI-shaped (``OpenAiStreamParser``) with TGI's finish
  reasons translated and the role (which TGI repeats in every delta) relayed on the first Delta only.

TGI leaves a matched stop sequence in the text; OpenAI clients expect it cut. ``StopTrimmer`` holds
back the last ``max(len(stop))`` characters until the stream finishes and cuts a stop sequence that
ends the text, so both parsers relay exactly one Delta per upstream event, with the same text a vLLM
backend would produce.
"""

from __future__ import annotations

from typing import Any

import msgspec

from backends.http_errors import EngineReportedError, MalformedEventError
from backends.openai_stream import OpenAiStreamParser
from backends.sse import SseEvent
from gateway.types import Delta, StreamEvent, Usage

FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length", "stop": "stop"}


class StopTrimmer:
    """Delays text by the longest stop sequence so a stop sequence at the very end can be cut."""

    __slots__ = ("_held", "_hold", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=0)
        self._held = ""

    def text(self, text: str, finish_reason: str | None) -> str:
        """The part of ``text`` that can be relayed now (everything once ``finish_reason`` is set)."""
        if not self._hold:
            return text
        held = self._held + text
        if finish_reason is not None:
            self._held = ""
            if finish_reason == "stop":
                for stop in self._stops:
                    if held.endswith(stop):
                        return held[: -len(stop)]
            return held
        cut = len(held) - self._hold
        if cut <= 0:
            self._held = held
            return ""
        self._held = held[cut:]
        return held[:cut]


class _Token(msgspec.Struct):
    text: str = ""
    special: bool = False


class _Details(msgspec.Struct):
    finish_reason: str
    generated_tokens: int
    input_length: int = 0


class _TokenEvent(msgspec.Struct):
    token: _Token | None = None
    details: _Details | None = None
    error: Any = None


_token_event_decoder = msgspec.json.Decoder(_TokenEvent)
_any_decoder = msgspec.json.Decoder()


class TgiTokenStreamParser:
    """``/generate_stream`` events -> Delta per token, Usage from the final ``details``."""

    __slots__ = ("_trimmer", "finished", "usage")

    def __init__(self, stops: list[str]) -> None:
        self._trimmer = StopTrimmer(stops)
        self.finished = False
        self.usage: Usage | None = None

    @property
    def complete(self) -> bool:
        return self.finished

    @property
    def ended(self) -> bool:
        return self.finished

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if event.event == "error":
            raise EngineReportedError(_payload(event.data))
        try:
            parsed = _token_event_decoder.decode(event.data)
        except msgspec.DecodeError as exc:
            raise MalformedEventError(f"unparsable TGI event: {exc}: {event.data[:200]!r}") from None
        if parsed.error is not None:
            raise EngineReportedError(_payload(event.data))
        if self.finished:
            raise MalformedEventError("TGI event after the final details event")
        if parsed.token is None:
            raise MalformedEventError(f"TGI event without a token: {event.data[:200]!r}")
        finish_reason: str | None = None
        if parsed.details is not None:
            finish_reason = FINISH_REASONS.get(parsed.details.finish_reason, parsed.details.finish_reason)
            self.finished = True
            self.usage = Usage(prompt_tokens=parsed.details.input_length,
                               completion_tokens=parsed.details.generated_tokens)
        text = "" if parsed.token.special else parsed.token.text
        return [Delta(text=self._trimmer.text(text, finish_reason), finish_reason=finish_reason)]

    def finish(self) -> list[StreamEvent]:
        usage, self.usage = self.usage, None
        return [usage] if usage is not None else []


class TgiChatStreamParser:
    """Messages API chunks -> the OpenAI parser's events, TGI finish reasons translated."""

    __slots__ = ("_openai", "_role_sent", "_trimmer")

    def __init__(self, stops: list[str]) -> None:
        self._openai = OpenAiStreamParser()
        self._trimmer = StopTrimmer(stops)
        self._role_sent = False

    @property
    def complete(self) -> bool:
        return self._openai.complete

    @property
    def ended(self) -> bool:
        return self._openai.ended

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        out = self._openai.feed(event)
        for delta in out:
            if isinstance(delta, Delta):
                # TGI repeats the role in every delta; relay it once, as vLLM and OpenAI do.
                if self._role_sent:
                    delta.role = None
                elif delta.role is not None:
                    self._role_sent = True
                if delta.finish_reason is not None:
                    delta.finish_reason = FINISH_REASONS.get(delta.finish_reason, delta.finish_reason)
                delta.text = self._trimmer.text(delta.text, delta.finish_reason)
        return out

    def finish(self) -> list[StreamEvent]:
        return self._openai.finish()


def _payload(data: str) -> dict[str, Any]:
    try:
        payload = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return {"error": data}
    return payload if isinstance(payload, dict) else {"error": payload}
