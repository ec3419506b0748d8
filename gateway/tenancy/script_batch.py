"""Coalesces the limiter's Lua script calls: every EVALSHA asked for during one event-loop iteration
goes to Redis in one pipeline (one write, one read), and each caller gets its own reply or error.
A deferrable call (a settlement: nobody waits for its answer on the response path) lingers up to
``linger_s`` and rides along with the next urgent call (an admission), so under steady load a
request costs one Redis round trip instead of two.

Why: with redis-py's asyncio client each command costs a connection checkout, a write, a wake-up and a
read; at a few dozen concurrent requests the admissions and settlements made in the same iteration
share all of that. Exactness is unchanged: Redis runs each script atomically, in the order sent, as it
would for separate calls. A lone call goes straight out. A script Redis no longer knows (restarted or
flushed: ``NOSCRIPT``, which means it did not run) is loaded and that call sent again.

The batches go over a ``RespPipeline`` (resp.py: one pipelined connection, hiredis) when one is given,
else over redis-py's pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from gateway.tenancy.resp import RespPipeline

Arg = str | int | bytes


class LuaScript:
    """A script's source and SHA-1, run with EVALSHA (and loaded on ``NOSCRIPT``)."""

    __slots__ = ("sha", "source")

    def __init__(self, redis: Redis, source: str) -> None:
        self.source = source
        self.sha: str = redis.register_script(source).sha


class _Call:
    __slots__ = ("args", "future", "keys", "script")

    def __init__(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg],
                 future: asyncio.Future[Any]) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future


DEFAULT_LINGER_S = 0.002


class ScriptBatcher:
    def __init__(self, redis: Redis, linger_s: float = DEFAULT_LINGER_S,
                 pipeline: RespPipeline | None = None) -> None:
        self._redis = redis
        self._pipeline = pipeline
        self._linger_s = linger_s
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_soon = False
        self._timer: asyncio.TimerHandle | None = None
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg], *,
                  defer: bool = False) -> Any:
        """The script's reply; raises what Redis or the connection raised for this call. ``defer``:
        send it with the next urgent call, or after ``linger_s`` at the latest."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future))
        if not defer:
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif not self._flush_soon and self._timer is None:
            self._timer = loop.call_later(self._linger_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_soon = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        assert self._loop is not None
        task = self._loop.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._execute(batch)
        except BaseException as error:  # the connection failed: every call in the batch failed
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        if self._pipeline is not None:
            return await self._execute_resp(self._pipeline, batch)
        if len(batch) == 1:
            return [await self._evalsha(batch[0])]
        pipe = self._redis.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                try:
                    replies[index] = await self._evalsha(batch[index])
                except ResponseError as error:  # this call's own failure, not the batch's
                    replies[index] = error
        return replies

    async def _execute_resp(self, pipeline: RespPipeline, batch: list[_Call]) -> list[Any]:
        replies = await pipeline.execute([_evalsha_command(call) for call in batch])
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                call = batch[index]
                loaded, replies[index] = await pipeline.execute([("SCRIPT", "LOAD", call.script.source),
                                                                 _evalsha_command(call)])
                if isinstance(loaded, ResponseError):  # the script itself is refused: say why
                    replies[index] = loaded
        return replies

    async def _evalsha(self, call: _Call) -> Any:
        try:
            return await self._redis.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        except NoScriptError:
            await self._redis.script_load(call.script.source)
            return await self._redis.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


def _evalsha_command(call: _Call) -> tuple[Arg, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
