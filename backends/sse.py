"""Sans-IO Server-Sent Events decoder (WHATWG EventSource parsing rules).

``SseDecoder.feed(bytes)`` returns the events completed by those bytes; it never touches the network.
Handles ``\\n``, ``\\r\\n`` and ``\\r`` line endings (also a ``\\r\\n`` split across two feeds), UTF-8
sequences split across feeds, a leading BOM, comments (``:keep-alive``), fields without a colon,
``data:`` with or without one leading space, multi-line ``data`` joined by ``\\n``, ``id`` (kept for
later events, ignored when it contains NUL) and ``retry``. An incomplete trailing event stays buffered
until more bytes arrive; per the spec it is never dispatched at end of stream.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: ``event`` is None for the default (unnamed) type."""

    data: str
    event: str | None = None
    id: str | None = None


class SseDecoder:
    """Incremental SSE parser: feed it bytes as they arrive, get whole events back."""

    __slots__ = ("_data", "_decoder", "_event", "_has_data", "_last_id", "_partial", "_skip_lf",
                 "_started", "retry_ms")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # text of the current, not yet terminated line
        self._skip_lf = False  # the last feed ended in "\r": a leading "\n" next belongs to it
        self._started = False  # the BOM check has been done
        self._data: list[str] = []
        self._has_data = False
        self._event: str | None = None
        self._last_id: str | None = None
        self.retry_ms: int | None = None

    @property
    def has_pending(self) -> bool:
        """True when bytes of an unfinished line or event are buffered (a truncated stream)."""
        return bool(self._partial) or self._has_data or self._event is not None

    def feed(self, data: bytes) -> list[SseEvent]:
        """Consume ``data`` and return the events it completed, in order."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf and text:
            if text[0] == "\n":
                text = text[1:]
            self._skip_lf = False
        if not text:
            return []
        self._skip_lf = text[-1] == "\r"
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._partial.append(text)
            return []
        if self._partial:
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial.clear()
        lines = text.split("\n")
        tail = lines.pop()
        if tail:
            self._partial.append(tail)
        events: list[SseEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._has_data:
            self._event = None
            return None
        event = SseEvent(data="\n".join(self._data), event=self._event or None, id=self._last_id)
        self._data.clear()
        self._has_data = False
        self._event = None
        return event
