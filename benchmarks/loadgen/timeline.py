"""Turns one response's timed events into the metrics of reference/benchmarks.md (sans-IO).

The client feeds every decoded SSE ``data`` payload with the ``time.perf_counter()`` at which its
network chunk arrived:
- a payload whose ``choices`` list is non-empty is *choice-bearing* (a role-only chat chunk counts,
  an empty text counts): the first one fixes TTFT, gaps between successive ones are the ITLs, the
  last one fixes E2EL;
- ``usage`` (in the final ``choices: []`` chunk, or cumulative in every chunk) gives the token
  counts; the last one seen wins; tokens are never counted from chunks;
- a payload with an ``error`` object is an in-stream error event: the request failed.
A request also fails on an HTTP error, a transport error, no choice-bearing event, or a stream that
ends without ``[DONE]`` (truncated). Non-streamed responses give E2EL only (no TTFT or ITL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    success: bool
    error: str | None
    http_status: int | None
    ttft: float | None
    itl: list[float]
    e2el: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    text: str


@dataclass
class StreamTimeline:
    start: float
    http_status: int | None = None
    _first: float | None = None
    _last: float | None = None
    _itl: list[float] = field(default_factory=list)
    _usage: dict[str, Any] | None = None
    _text: list[str] = field(default_factory=list)
    _error: str | None = None
    _done: bool = False

    def on_payload(self, at: float, data: str, payload: Any) -> None:
        """One SSE ``data`` field: ``data`` as received, ``payload`` its parsed JSON (None for [DONE])."""
        if data == "[DONE]":
            self._done = True
            return
        if not isinstance(payload, dict):
            self.fail(f"non-object SSE payload: {data[:200]!r}")
            return
        error = payload.get("error")
        if error is not None and self._error is None:
            message = error.get("message", error) if isinstance(error, dict) else error
            self._error = f"error event: {message}"
        choices = payload.get("choices")
        if isinstance(choices, list) and choices:
            if self._last is None:
                self._first = at
            else:
                self._itl.append(at - self._last)
            self._last = at
            self._text.append(_choice_text(choices[0]))
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self._usage = usage

    def on_response(self, at: float, payload: Any) -> None:
        """A whole non-streamed response body."""
        self._done = True
        if not isinstance(payload, dict):
            self.fail("response body is not a JSON object")
            return
        choices = payload.get("choices")
        if isinstance(choices, list) and choices:
            self._last = at
            self._text.append(_choice_text(choices[0]))
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]

    def fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason

    def outcome(self) -> Outcome:
        error = self._error
        if error is None and self._last is None:
            error = "no choice-bearing event"
        if error is None and not self._done:
            error = "stream ended without [DONE]"
        usage = self._usage or {}
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Outcome(
            success=error is None, error=error, http_status=self.http_status,
            ttft=None if self._first is None else self._first - self.start,
            itl=self._itl, e2el=None if self._last is None else self._last - self.start,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            cached_tokens=_int_or_none(cached), text="".join(self._text))


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    for container in (choice, choice.get("delta"), choice.get("message")):
        if isinstance(container, dict):
            for key in ("text", "content"):
                value = container.get(key)
                if isinstance(value, str):
                    return value
    return ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
