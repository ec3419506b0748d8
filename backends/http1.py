"""A minimal asyncio HTTP/1.1 client for talking to engines on a trusted network.

``Http1Client`` keeps a keep-alive pool per origin (optionally bounded, idle connections expire) of
``asyncio.Protocol`` connections parsed by ``httptools``. A request goes out in one ``transport.write``
(request line, headers, ``Content-Length`` and body); ``request`` returns a ``Response`` as soon as the
status and headers are in, and the body then arrives chunk by chunk (``Content-Length``, chunked or
read-until-close). When the consumer lags, reading from the socket pauses above a high-water mark and
resumes once the buffer is drained.

A connection goes back to the pool only when its response was received completely and the server
allows keep-alive; ``Response.close`` before that aborts the socket at once, so the server sees the
disconnect (an engine then aborts the generation). There are no read timeouts: callers wrap calls in
``asyncio.timeout``; ``connect_timeout`` bounds opening a new connection only.

Errors: ``ConnectError`` (cannot connect), ``StaleConnectionError`` (a reused pooled connection closed
before any byte of the answer: the server never processed the request, safe to retry once),
``ConnectionBrokenError`` (closed before the response was complete), ``MalformedResponseError`` (not
HTTP/1.x). No proxies, no redirects, no decompression, no HEAD, no request streaming.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import httptools

DEFAULT_HIGH_WATER = 256 * 1024
_HEAD_CACHE_SIZE = 256
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Http1Error(Exception):
    """Base of this client's errors."""


class ConnectError(Http1Error):
    """The connection could not be opened (refused, unreachable, unknown host, TLS, connect timeout)."""


class ConnectionBrokenError(Http1Error):
    """The connection closed or failed before the response was complete."""


class StaleConnectionError(ConnectionBrokenError):
    """A reused pooled connection closed before any byte of the answer: the server did not process
    the request, which may be sent again on a new connection."""


class MalformedResponseError(Http1Error):
    """The server's bytes are not a valid HTTP/1.x response."""


class Origin(NamedTuple):
    """Where connections go; connections are pooled per origin."""

    host: str
    port: int
    tls: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an ``http://`` or ``https://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    origin = Origin(parts.hostname, parts.port or (443 if tls else 80), tls)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return origin, target


def encode_head(method: str, target: str, host: str, headers: Mapping[str, str], body_length: int) -> bytes:
    """Request line and headers; ``Host`` and ``Content-Length`` are the client's own."""
    return _head_start(method, target, host, headers) + _head_end(method, body_length)


def _head_start(method: str, target: str, host: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n", f"host: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the client")
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    # One count instead of a check per value: any CR or LF beyond the line ends means injected lines.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("CR or LF in the request line or a header")
    return text.encode("latin-1")


def _head_end(method: str, body_length: int) -> bytes:
    if body_length or method in _BODY_METHODS:
        return b"content-length: %d\r\n\r\n" % body_length
    return b"\r\n"


class Response:
    """One response: ``status`` and headers, then the body through ``read_chunk`` / ``read``.

    Reading the body to its end (``read_chunk`` returning ``b""``) or ``release`` returns the connection
    to the pool; ``close`` before the body is complete closes the socket. Usable as an async context
    manager (``close`` on the way out)."""

    __slots__ = ("_conn", "_raw_headers", "status")

    def __init__(self, conn: _Connection, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self._conn: _Connection | None = conn
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


class _Connection(asyncio.Protocol):
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


class Http1Client:
    """A pool of HTTP/1.1 keep-alive connections per origin.

    ``limit_per_origin`` bounds the connections open to one origin (None: unbounded; requests beyond
    the limit wait for one); idle connections are closed after ``idle_s``; ``high_water`` is how many
    unread body bytes a response buffers before reading from the socket pauses."""

    def __init__(self, *, limit_per_origin: int | None = None, idle_s: float = 30.0,
                 high_water: int = DEFAULT_HIGH_WATER, ssl_context: ssl.SSLContext | None = None) -> None:
        if limit_per_origin is not None and limit_per_origin < 1:
            raise ValueError("limit_per_origin must be at least 1")
        self._limit = limit_per_origin
        self._idle_s = idle_s
        self._high_water = high_water
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: dict[Origin, int] = {}
        self._waiters: dict[Origin, collections.deque[asyncio.Future[None]]] = {}
        self._connections: set[_Connection] = set()
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[Origin, bytes]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      body: bytes = b"", *, connect_timeout: float | None = None) -> Response:
        """Send one request and return once the response headers are in (see the module docstring
        for the errors). A new connection must open within ``connect_timeout`` (None: no limit)."""
        origin, head = self._head(method, url, headers)
        head += _head_end(method, len(body))
        conn = await self._acquire(origin, connect_timeout)
        headers_in = conn.begin()
        assert conn.transport is not None
        conn.transport.write(head + body if body else head)
        try:
            await headers_in
        except BaseException:
            conn.finish()  # a failed or abandoned request leaves the connection in an unknown state
            raise
        return Response(conn, conn.status, conn.raw_headers)

    async def get(self, url: str, headers: Mapping[str, str] | None = None, *,
                  connect_timeout: float | None = None) -> tuple[int, bytes]:
        """GET ``url``: (status, whole body)."""
        response = await self.request("GET", url, headers, connect_timeout=connect_timeout)
        async with response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        """Close every connection, pooled or in use; the client cannot be used afterwards."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._connections):
            conn.abort()
        self._idle.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def idle_connections(self, url: str) -> int:
        """How many idle pooled connections the origin of ``url`` has (for tests and metrics)."""
        return len(self._idle.get(split_url(url)[0], ()))

    def _head(self, method: str, url: str, headers: Mapping[str, str] | None) -> tuple[Origin, bytes]:
        """(origin, request line and headers up to the length) for a request."""
        # Adapters send the same few URLs and header sets over and over: encoding them each time would
        # cost more than the rest of the request line handling.
        key = (method, url, tuple(headers.items()) if headers else ())
        found = self._heads.get(key)
        if found is None:
            origin, target = split_url(url)
            found = origin, _head_start(method, target, origin.host_header, headers or {})
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()
            self._heads[key] = found
        return found

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        while True:
            if self._closed:
                raise Http1Error("client is closed")
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()  # the most recently used: the likeliest to be alive
                if conn.usable and conn.loop.time() - conn.idle_since < self._idle_s:
                    conn.reused = True
                    return conn
                conn.abort()
            if self._limit is None or self._open.get(origin, 0) < self._limit:
                return await self._connect(origin, connect_timeout)
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(origin, collections.deque())
            waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in waiters:
                    waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one(origin)  # woken and cancelled at once: pass the turn on
                raise
            finally:
                if not waiters and self._waiters.get(origin) is waiters:
                    del self._waiters[origin]

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin, loop, self._high_water)
        self._open[origin] = self._open.get(origin, 0) + 1
        self._connections.add(conn)
        ssl_arg: Any = None
        if origin.tls:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            ssl_arg = self._ssl_context
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=ssl_arg,
                                             server_hostname=origin.host if origin.tls else None)
        except OSError as exc:  # TimeoutError included: our own connect_timeout
            self.forget(conn)
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc!r}") from None
        except BaseException:
            conn.abort()
            self.forget(conn)
            raise
        return conn

    def put_idle(self, conn: _Connection) -> None:
        if self._closed or not conn.usable:
            conn.abort()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self._idle_s, self._sweep)
        self._wake_one(conn.origin)

    def forget(self, conn: _Connection) -> None:
        """A connection is gone (closed, failed, or never opened)."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        self._open[conn.origin] -= 1
        if not self._open[conn.origin]:
            del self._open[conn.origin]
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one(conn.origin)

    def _wake_one(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest: float | None = None
        for origin, idle in list(self._idle.items()):
            keep: list[_Connection] = []
            for conn in idle:
                if now - conn.idle_since >= self._idle_s or not conn.usable:
                    conn.abort()
                else:
                    keep.append(conn)
                    oldest = conn.idle_since if oldest is None else min(oldest, conn.idle_since)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self._idle_s, self._sweep)
