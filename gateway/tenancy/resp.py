"""A lean pipelined Redis connection for the limiter's hot path (the batched EVALSHA calls of
``script_batch.py``): one TCP connection, commands packed and replies parsed by hiredis, batches
answered in the order sent.

Why not redis-py's asyncio client here: per pipelined batch it runs a connection checkout, a retry
wrapper, observability hooks and a generic reply path; under the overhead benchmark that was about a
fifth of the gateway's CPU per request with the full pipeline. ``benchmarks/redis_clients.py`` measures
both on the same batches (results/redis_clients.json). redis-py still serves everything else (key
lookups, heartbeats, ledgers, scripts' registration), and TLS or unix-socket URLs, which this does not
speak.

Failures keep redis-py's exception classes, so callers' fail-open/fail-closed handling is unchanged: a
connect failure or a dropped connection is ``redis.exceptions.ConnectionError``, no answer within
``timeout_s`` is ``redis.exceptions.TimeoutError`` (the connection is then closed: a pipelined
connection with a missing reply cannot be trusted), and both fail every batch waiting on that
connection. A command's own error reply is returned in its place as a ``ResponseError``
(``NoScriptError`` for NOSCRIPT), not raised. The next batch after a failure reconnects.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int | bytes
Command = Sequence[Arg]
# Called once with a batch's replies, or with the exception that failed the batch.
OnReplies = Callable[[list[Any] | Exception], None]


class _Batch:
    __slots__ = ("deadline", "future", "on_replies", "remaining", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Any]] | None, deadline: float,
                 on_replies: OnReplies | None = None) -> None:
        self.remaining = count
        self.replies: list[Any] = []
        self.future = future
        self.on_replies = on_replies
        self.deadline = deadline

    def answer(self, loop: asyncio.AbstractEventLoop, outcome: list[Any] | Exception) -> None:
        on_replies = self.on_replies
        if on_replies is not None:
            try:
                on_replies(outcome)
            except Exception as error:  # a caller's bug must not break the connection's reply matching
                loop.call_exception_handler({"message": "Redis batch callback failed", "exception": error})
            return
        future = self.future
        assert future is not None
        if future.done():  # its caller may have been cancelled
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _RespProtocol(asyncio.Protocol):
    """One connection: writes packed batches, matches replies to batches in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._batches: collections.deque[_Batch] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not registered as an asyncio.Transport subclass: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if self.closed or self._transport is None:
            future.set_exception(RedisConnectionError("Redis connection closed"))
            return future
        self._enqueue(payload, _Batch(count, future, self._loop.time() + self._timeout_s))
        return future

    def send_with(self, payload: bytes, count: int, on_replies: OnReplies) -> bool:
        """Write the batch now; ``on_replies`` is called from the reply's read (no future, no task
        wake-up in between). False, nothing written, when the connection is closed."""
        if self.closed or self._transport is None:
            return False
        self._enqueue(payload, _Batch(count, None, self._loop.time() + self._timeout_s, on_replies))
        return True

    def _enqueue(self, payload: bytes, batch: _Batch) -> None:
        assert self._transport is not None
        self._batches.append(batch)
        self._transport.write(payload)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._batches[0].deadline, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while self._batches:
                reply = reader.gets()
                if reply is False:
                    return
                batch = self._batches[0]
                if isinstance(reply, hiredis.ReplyError):
                    reply = _error_reply(str(reply))
                batch.replies.append(reply)
                batch.remaining -= 1
                if batch.remaining == 0:
                    self._batches.popleft()
                    batch.answer(self._loop, batch.replies)
        except hiredis.ProtocolError as error:
            self._fail(RedisConnectionError(f"Redis protocol error: {error}"))
            return
        if not self._batches:
            reply = reader.gets()
            if reply is not False:
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._batches:
            return
        oldest = self._batches[0].deadline
        if oldest <= self._loop.time():
            self._fail(RedisTimeoutError(f"no answer from Redis within {self._timeout_s} s"))
        else:
            self._watchdog = self._loop.call_at(oldest, self._check_deadline)

    def close(self) -> None:
        self._fail(RedisConnectionError("Redis connection closed by the gateway"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"Redis connection lost: {exc}" if exc else "Redis closed the connection"
        self._fail(RedisConnectionError(reason))

    def _fail(self, error: Exception) -> None:
        if self.closed and not self._batches:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        batches, self._batches = self._batches, collections.deque()
        for batch in batches:
            batch.answer(self._loop, error)
        if self._transport is not None:
            self._transport.abort()


def _error_reply(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


def pack(commands: Sequence[Command]) -> bytes:
    """The commands in RESP, ready to write as one batch."""
    # hiredis' stub types the argument as a 1-tuple; it takes any length.
    return b"".join(hiredis.pack_command(cast(Any, tuple(command))) for command in commands)


class RespPipeline:
    """Pipelined batches over one lazily (re)connected connection to a ``redis://`` server."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout_s: float, connect_timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._hello: list[Command] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Task[_RespProtocol] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, connect_timeout_s: float) -> RespPipeline | None:
        """A pipeline for a plain ``redis://host:port/db`` URL; None for schemes it does not speak."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            return None
        db_path = parts.path.lstrip("/")
        return cls(parts.hostname, parts.port or 6379, db=int(db_path) if db_path else 0,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password is not None else None,
                   timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)

    def send_now(self, commands: Sequence[Command], on_replies: OnReplies) -> bool:
        """Write ``commands`` at once when connected; ``on_replies`` then gets their replies (as
        ``execute`` returns them) or the connection's failure, from the reply's read. False, nothing
        sent, when there is no open connection yet: use ``execute``, which connects."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return False
        return protocol.send_with(pack(commands), len(commands), on_replies)

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """One reply per command, in order (an error reply in its place as a ``ResponseError``)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(pack(commands), len(commands))

    async def _connect(self) -> _RespProtocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        return protocol

    async def _open(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _RespProtocol(loop, self._timeout_s), self._host, self._port)
        except TimeoutError:
            raise RedisTimeoutError(f"connecting to Redis at {self._host}:{self._port} timed out") from None
        except OSError as error:
            where = f"{self._host}:{self._port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {error}") from None
        if self._hello:
            for reply in await protocol.send(pack(self._hello), len(self._hello)):
                if isinstance(reply, ResponseError):
                    protocol.close()
                    raise RedisConnectionError(f"Redis refused the connection's setup: {reply}")
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
