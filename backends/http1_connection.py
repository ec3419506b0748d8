"""One pooled connection of ``backends.http1``: the ``asyncio.Protocol`` that feeds httptools' response
parser and buffers the body (pausing the socket above the high-water mark), and the ``Response`` a
caller reads it through. The pool (``Http1Client``) hands connections out and takes them back.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import TYPE_CHECKING, cast

import httptools

from backends.http1_wire import (
    ConnectionBrokenError,
    Http1Error,
    MalformedResponseError,
    Origin,
    StaleConnectionError,
)

if TYPE_CHECKING:
    from backends.http1 import Http1Client

DEFAULT_HIGH_WATER = 256 * 1024


class Response:
    """One response: ``status`` and headers, then the body through ``read_chunk`` / ``read``.

    Reading the body to its end (``read_chunk`` returning ``b""``) or ``release`` returns the connection
    to the pool; ``close`` before the body is complete closes the socket. Usable as an async context
    manager (``close`` on the way out)."""

    __slots__ = ("_conn", "_raw_headers", "status")

    def __init__(self, conn: Connection, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self._conn: Connection | None = conn
        self.status = status
        self._raw_headers = raw_headers

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self._raw_headers

    @property
    def headers(self) -> dict[str, str]:
        """Header names lower-cased; a repeated header keeps its values joined by ``, ``."""
        out: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    async def read_chunk(self) -> bytes:
        """The body bytes received since the last call, waiting for some; ``b""`` at the end."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                self.release()
                return b""
            if conn.error is not None:
                self.release()
                raise conn.error
            waiter = conn.waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                conn.waiter = None

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts: list[bytes] = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def at_eof(self) -> bool:
        """True when the body was received completely and all of it was read."""
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    def release(self) -> None:
        """Done with this response: the connection is pooled if the body was received completely (any
        unread part is dropped), closed otherwise."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    def close(self) -> None:
        """Done with this response, closing the connection unless the body was received completely."""
        self.release()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class Connection(asyncio.Protocol):
    """One TCP connection: feeds the parser, buffers the body for the response being read."""

    def __init__(self, client: Http1Client, origin: Origin, loop: asyncio.AbstractEventLoop,
                 high_water: int) -> None:
        self.client = client
        self.origin = origin
        self.loop = loop
        self.high_water = high_water
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reused = False
        self.idle_since = 0.0
        # The request in flight (see ``begin``).
        self.active = False
        self.received = False
        self.headers_done = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_waiter: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False
        self.error: Http1Error | None = None
        self.waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, without subclassing it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not TCP (a test's socket pair); nothing to tune

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Bytes nobody asked for: the connection's state is unknown, so it cannot be reused.
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(MalformedResponseError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self.fail(MalformedResponseError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.active and not self.complete and self.error is None:
            if not self.headers_done:
                if not self.received and self.reused:
                    self.fail(StaleConnectionError(f"pooled connection closed before an answer ({exc!r})"))
                else:
                    self.fail(ConnectionBrokenError(
                        f"connection closed before the response headers ({exc!r})"))
            elif exc is None and self.until_close():
                self.complete = True
                self.wake()
            else:
                self.fail(ConnectionBrokenError(f"connection closed mid-body ({exc!r})"))
        self.client.forget(self)

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:
            # More bytes after a complete response, in the same read: a confused or hostile server.
            raise MalformedResponseError("data after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # informational (no body): the real response follows
        self.status = status
        self.headers_done = True
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self.high_water and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        waiter = self.waiter  # wake() inlined: this runs for every chunk
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of an informational response
            self.raw_headers = []
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self.wake()

    # --- used by the client and the response ---

    def begin(self) -> asyncio.Future[None]:
        """Reset the per-request state; the future completes when the response headers are in."""
        self.active = True
        self.received = self.headers_done = self.complete = self.keep_alive = False
        self.status = 0
        self.raw_headers = []
        self.error = None
        self.headers_waiter = self.loop.create_future()
        return self.headers_waiter

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: Http1Error) -> None:
        """The request in flight failed: tell whoever waits, and drop the connection."""
        self.error = error
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            waiter.exception()  # retrieved by the awaiting request, or by nobody once it was cancelled
        self.wake()
        self.abort()

    def until_close(self) -> bool:
        """Whether the body is delimited by the end of the connection (no length, not chunked)."""
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding"
                                                and b"chunked" in value.lower()):
                return False
        return self.status not in (204, 304)

    def finish(self) -> None:
        """The response is done with: pool the connection if reusable, else close it."""
        self.active = False
        self.headers_waiter = None
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()
        if self.complete and self.keep_alive and not self.lost and self.error is None:
            self.client.put_idle(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()
