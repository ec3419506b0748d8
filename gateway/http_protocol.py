"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with each response's head sent
in the same ``write`` as the start of its body.

Why: uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, then its body in a second ``write`` system call, so every non-stream answer
costs two. In a py-spy profile of the full pipeline (non-stream, concurrency 16) the writes to clients
were 9% of the gateway's CPU. Here the head is held for at most one turn of the event loop: the body's
first write takes it along (the data plane sends both back to back), and a head with nothing behind it
(a stream whose first event is still being generated) goes out on its own at the loop's next turn.
Bytes always leave in the order they were written; closing sends a held head first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1."
_HEAD_END = b"\r\n\r\n"


class HeadJoiningTransport:
    """A transport that holds a lone response head until the next write joins it, or the loop's
    next turn. Everything it does not override goes to the transport it wraps."""

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        if data[:7] == _HEAD_START and data[-4:] == _HEAD_END:
            self._held = bytes(data)
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Send a held head now."""
        self._flush_handle = None
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over a ``HeadJoiningTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadJoiningTransport(transport, self.loop))  # type: ignore[arg-type]
