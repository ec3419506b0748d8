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

Calls of a script that says how (``Merge``) are merged within a batch: the admissions (or the
settlements) on one key's limits become one script call that handles them in order. Redis then reads
and writes each limit once for all of them instead of once per request (alone, an admission costs
Redis ~22 us and a settlement ~12 us, most of it per command inside; one Redis core is what caps a
gateway fleet's full pipeline: benchmarks/limiter_scripts.py, benchmarks/workers.py). Moving a merged
call to its first member's place reorders it only among calls that were pending together, none of
which had an answer yet: any order of those is one Redis could have run them in.

The batches go over a ``RespPipeline`` (resp.py: one pipelined connection, hiredis) when one is given,
else over redis-py's pipeline.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from gateway.tenancy.resp import RespPipeline

Arg = str | int | bytes


class Merge(Protocol):
    """How calls of one script that are pending together become one call, and its reply theirs."""

    def group(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Hashable | None:
        """Calls with equal groups can be merged (None: this one cannot)."""

    def combine(self, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
                ) -> tuple[LuaScript, Sequence[Arg], Sequence[Arg]]:
        """The one call (script, keys, args) that does what ``calls`` (keys, args) do, in order."""

    def split(self, reply: Any, count: int) -> list[Any]:
        """The merged call's reply as the ``count`` replies the calls would have had."""


class LuaScript:
    """A script's source and SHA-1, run with EVALSHA (and loaded on ``NOSCRIPT``); ``merge``: how its
    calls pending together are merged (None: never)."""

    __slots__ = ("merge", "sha", "source")

    def __init__(self, redis: Redis, source: str, merge: Merge | None = None) -> None:
        self.source = source
        self.sha: str = redis.register_script(source).sha
        self.merge = merge


# Given the reply (or error) of a call whose caller cancelled its future before the reply came.
OnOrphan = Callable[[Any], None]


class _Call:
    __slots__ = ("args", "future", "keys", "members", "merge", "on_orphan", "script")

    def __init__(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg],
                 future: asyncio.Future[Any] | None, members: list[_Call] | None = None,
                 merge: Merge | None = None, on_orphan: OnOrphan | None = None) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        self.members = members  # a merged call: the calls it stands for, each with its own future
        self.merge = merge  # and how its reply splits into theirs
        self.on_orphan = on_orphan

    def resolve(self, reply: Any) -> None:
        """Hand ``reply`` (or the exception) to the caller, or, merged, to each member's caller."""
        if self.members is not None:
            assert self.merge is not None
            parts: list[Any] = [reply] * len(self.members)
            if not isinstance(reply, BaseException):
                try:
                    parts = self.merge.split(reply, len(self.members))
                except Exception as error:  # a reply it cannot split fails every member, never hangs one
                    parts = [error] * len(self.members)
            for member, part in zip(self.members, parts, strict=True):
                member.resolve(part)
            return
        future = self.future
        assert future is not None
        if future.done():  # the caller was cancelled meanwhile
            if self.on_orphan is not None:
                self.on_orphan(reply)
            return
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)


MAX_MERGED = 256  # calls per merged call: its arguments stay far below Lua's stack limit (unpack)


def merge_calls(batch: list[_Call]) -> list[_Call]:
    """``batch`` with the calls of each mergeable group replaced by one call, at the first's place."""
    if len(batch) < 2:  # the usual lone call: nothing to group, no keys to copy
        return batch
    groups: dict[tuple[str, Hashable], list[_Call]] = {}
    for call in batch:
        merge = call.script.merge
        if merge is not None:
            group = merge.group(call.keys, call.args)
            if group is not None:
                groups.setdefault((call.script.sha, group), []).append(call)
    if all(len(calls) < 2 for calls in groups.values()):
        return batch
    replaced: dict[int, _Call | None] = {}
    for calls in groups.values():
        for start in range(0, len(calls), MAX_MERGED):
            chunk = calls[start:start + MAX_MERGED]
            if len(chunk) < 2:
                continue
            merge = chunk[0].script.merge
            assert merge is not None
            script, keys, args = merge.combine([(call.keys, call.args) for call in chunk])
            merged = _Call(script, keys, args, None, members=chunk, merge=merge)
            replaced[id(chunk[0])] = merged
            for call in chunk[1:]:
                replaced[id(call)] = None
    out: list[_Call] = []
    for call in batch:
        stand_in = replaced.get(id(call), call)
        if stand_in is not None:
            out.append(stand_in)
    return out


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
        return await self.submit(script, keys, args, defer=defer)

    def submit(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg], *,
               defer: bool = False, on_orphan: OnOrphan | None = None) -> asyncio.Future[Any]:
        """``run`` without a coroutine: the future of the call's reply (or error). Call it from the
        event loop's thread, with the loop running. Cancelling the future does not stop the call (it
        may already be on its way); ``on_orphan`` then gets its reply (or error) when it comes, so a
        caller can await the future itself, with no ``shield`` and its extra loop turn, and still
        undo what the call did."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future, on_orphan=on_orphan))
        if not defer:
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif not self._flush_soon and self._timer is None:
            self._timer = loop.call_later(self._linger_s, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_soon = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch = merge_calls(pending)
        pipeline = self._pipeline
        if pipeline is not None and pipeline.send_now([_evalsha_command(call) for call in batch],
                                                      functools.partial(self._answered, pending, batch)):
            return
        self._spawn(self._send(pending, batch))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answered(self, pending: list[_Call], batch: list[_Call], outcome: list[Any] | Exception) -> None:
        """The replies of a batch written by ``_flush`` on the open connection (or its failure)."""
        if isinstance(outcome, Exception):
            for call in pending:
                call.resolve(outcome)
            return
        for call, reply in zip(batch, outcome, strict=True):
            if isinstance(reply, NoScriptError):  # it did not run: load the script, send it again
                self._spawn(self._resend(call))
            else:
                call.resolve(reply)

    async def _resend(self, call: _Call) -> None:
        assert self._pipeline is not None
        try:
            reply = await _load_and_run(self._pipeline, call)
        except Exception as error:
            reply = error
        call.resolve(reply)

    async def _send(self, pending: list[_Call], batch: list[_Call]) -> None:
        """The batch over a new connection, or over redis-py's pipeline."""
        try:
            replies = await self._execute(batch)
        except BaseException as error:  # the connection failed: every call in the batch failed
            for call in pending:
                call.resolve(error)
            if not isinstance(error, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            call.resolve(reply)

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
                replies[index] = await _load_and_run(pipeline, batch[index])
        return replies

    async def _evalsha(self, call: _Call) -> Any:
        try:
            return await self._redis.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        except NoScriptError:
            await self._redis.script_load(call.script.source)
            return await self._redis.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


def _evalsha_command(call: _Call) -> tuple[Arg, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


async def _load_and_run(pipeline: RespPipeline, call: _Call) -> Any:
    """A call Redis answered NOSCRIPT (it did not run): load its script and send it again, in one batch."""
    loaded, reply = await pipeline.execute([("SCRIPT", "LOAD", call.script.source), _evalsha_command(call)])
    return loaded if isinstance(loaded, ResponseError) else reply  # a refused script: say why
