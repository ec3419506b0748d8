"""Sans-IO Server-Sent Events decoder for the load generator: bytes in, ``data`` payloads out.

Kept separate from the gateway's own SSE code on purpose: the measuring client must not share a
parser (or its bugs) with the system it measures. Handles events split across network chunks at any
byte (including inside a UTF-8 sequence or a ``\\r\\n``), ``\\n``, ``\\r\\n`` and ``\\r`` line endings,
multi-line ``data:`` fields (joined with ``\\n``), comments (``:`` lines, e.g. keep-alive pings) and
other fields (``event:``, ``id:``), which are ignored.
"""

from __future__ import annotations


class SseDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The ``data`` payloads of every event completed by ``chunk``, in order."""
        self._buffer += chunk
        payloads: list[str] = []
        while True:
            line, found = self._next_line()
            if not found:
                return payloads
            if not line:
                if self._data:
                    payloads.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value.removeprefix(b" ").decode("utf-8", errors="replace"))

    def flush(self) -> list[str]:
        """At the end of the stream: the payload of a last event that lacked its blank line."""
        payloads = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return payloads

    def _next_line(self) -> tuple[bytes, bool]:
        buffer = self._buffer
        newline = buffer.find(b"\n")
        carriage = buffer.find(b"\r")
        if carriage != -1 and (newline == -1 or carriage < newline):
            if carriage == len(buffer) - 1:
                return b"", False  # a "\r" at the end may be the first half of "\r\n"
            end = carriage + 2 if buffer[carriage + 1 : carriage + 2] == b"\n" else carriage + 1
            line = buffer[:carriage]
        elif newline != -1:
            end = newline + 1
            line = buffer[:newline]
        else:
            return b"", False
        self._buffer = buffer[end:]
        return line, True
