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

This module is the pool; one connection and its response are ``backends.http1_connection``, the errors
and the request encoding ``backends.http1_wire`` (re-exported here).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from typing import Any

from backends.http1_connection import DEFAULT_HIGH_WATER, Connection, Response
from backends.http1_wire import (
    ConnectError,
    ConnectionBrokenError,
    Http1Error,
    MalformedResponseError,
    Origin,
    StaleConnectionError,
    encode_head,
    head_end,
    head_start,
    split_url,
)

__all__ = ["ConnectError", "ConnectionBrokenError", "Http1Client", "Http1Error", "MalformedResponseError",
           "Origin", "Response", "StaleConnectionError", "encode_head", "split_url"]

_HEAD_CACHE_SIZE = 256


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
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: dict[Origin, int] = {}
        self._waiters: dict[Origin, collections.deque[asyncio.Future[None]]] = {}
        self._connections: set[Connection] = set()
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[Origin, bytes]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      body: bytes = b"", *, connect_timeout: float | None = None) -> Response:
        """Send one request and return once the response headers are in (see the module docstring
        for the errors). A new connection must open within ``connect_timeout`` (None: no limit)."""
        origin, head = self._head(method, url, headers)
        head += head_end(method, len(body))
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
            found = origin, head_start(method, target, origin.host_header, headers or {})
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()
            self._heads[key] = found
        return found

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> Connection:
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

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, origin, loop, self._high_water)
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

    def put_idle(self, conn: Connection) -> None:
        if self._closed or not conn.usable:
            conn.abort()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self._idle_s, self._sweep)
        self._wake_one(conn.origin)

    def forget(self, conn: Connection) -> None:
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
            keep: list[Connection] = []
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
