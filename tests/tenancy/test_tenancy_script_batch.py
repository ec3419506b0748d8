"""The limiter's script batching over real Redis: calls made in one event-loop iteration share one
pipeline, each caller gets its own reply or error, a script Redis forgot is reloaded, and a broken
connection fails every call of the batch (a private redis-server for the destructive cases); calls of a
mergeable script pending together run as one, in order, each caller still getting its own reply or the
merged call's error. Each case runs over both carriers: redis-py's pipeline and the lean RESP connection
(resp.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.tenancy.resp import RespPipeline
from gateway.tenancy.script_batch import MAX_MERGED, Arg, LuaScript, ScriptBatcher
from tests.support.redis_server import RedisServer

SHARED = "redis://127.0.0.1:6379/0"
ECHO_INCR = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
FAIL_ON_BAD = "if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end return ARGV[1]"


class CountingRedis(Redis):
    """Real Redis client that counts the pipelines it hands out (how many round trips were batched)."""

    pipelines = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return super().pipeline(*args, **kwargs)


class CountingPipeline(RespPipeline):
    """The lean connection, counting its multi-command batches (as CountingRedis counts pipelines)."""

    def __init__(self, owner: CountingRedis, url: str, timeout_s: float) -> None:
        port = urlsplit(url).port
        assert port is not None
        super().__init__("127.0.0.1", port, timeout_s=timeout_s, connect_timeout_s=timeout_s)
        self._owner = owner

    async def execute(self, commands: Any) -> list[Any]:
        if len(commands) > 1:
            self._owner.pipelines += 1
        return await super().execute(commands)

    def send_now(self, commands: Any, on_replies: Any) -> bool:
        sent = super().send_now(commands, on_replies)
        if sent and len(commands) > 1:
            self._owner.pipelines += 1
        return sent


CARRIERS = ["redis-py", "resp"]


def batcher_for(client: CountingRedis, carrier: str, url: str, timeout_s: float = 2.0,
                **kwargs: Any) -> ScriptBatcher:
    pipeline = CountingPipeline(client, url, timeout_s) if carrier == "resp" else None
    return ScriptBatcher(client, pipeline=pipeline, **kwargs)


@pytest.fixture(params=CARRIERS)
def carrier(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def redis() -> AsyncIterator[CountingRedis]:
    client = CountingRedis.from_url(SHARED)
    yield client
    await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


async def test_calls_of_one_iteration_share_one_pipeline_and_get_their_own_replies(
        redis: CountingRedis, carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED)
    script = LuaScript(redis, ECHO_INCR)
    key = f"test:batch:{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(*(batcher.run(script, [key], [f"caller-{i}"]) for i in range(50)))
        assert redis.pipelines == 1
        assert [reply[0] for reply in replies] == [f"caller-{i}".encode() for i in range(50)]
        assert sorted(reply[1] for reply in replies) == list(range(1, 51)), "each script ran once, in order"
        assert [reply[1] for reply in replies] == list(range(1, 51))
        alone = await batcher.run(script, [key], ["alone"])
        assert alone == [b"alone", 51] and redis.pipelines == 1, "a lone call needs no pipeline"
    finally:
        await redis.delete(key)


async def test_a_failing_script_fails_only_its_caller(redis: CountingRedis, carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED)
    script = LuaScript(redis, FAIL_ON_BAD)
    results = await asyncio.gather(*(batcher.run(script, [], [arg]) for arg in ("a", "bad", "c")),
                                   return_exceptions=True)
    assert results[0] == b"a" and results[2] == b"c"
    assert isinstance(results[1], ResponseError) and "bad argument" in str(results[1])


async def test_a_script_redis_forgot_is_loaded_again(private_redis: RedisServer, carrier: str) -> None:
    client = CountingRedis.from_url(private_redis.url)
    try:
        batcher = batcher_for(client, carrier, private_redis.url)
        script = LuaScript(client, ECHO_INCR)
        await client.script_flush()
        assert await batcher.run(script, ["k"], ["one"]) == [b"one", 1]
        await client.script_flush()
        replies = await asyncio.gather(*(batcher.run(script, ["k"], [str(i)]) for i in range(5)))
        assert [reply[1] for reply in replies] == [2, 3, 4, 5, 6]
    finally:
        await client.aclose()


async def test_a_broken_connection_fails_every_call_of_the_batch(private_redis: RedisServer,
                                                                 carrier: str) -> None:
    client = CountingRedis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        batcher = batcher_for(client, carrier, private_redis.url, timeout_s=1.0)
        script = LuaScript(client, ECHO_INCR)
        assert await batcher.run(script, ["k"], ["warm"]) == [b"warm", 1]
        private_redis.kill()
        results = await asyncio.gather(*(batcher.run(script, ["k"], [str(i)]) for i in range(4)),
                                       return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError | OSError) for result in results), results
    finally:
        await client.aclose()


async def test_a_deferred_call_rides_with_the_next_urgent_one(redis: CountingRedis, carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED, linger_s=5.0)
    script = LuaScript(redis, ECHO_INCR)
    key = f"test:batch:{uuid.uuid4().hex}"
    try:
        await batcher.run(script, [key], ["warm"])  # the script is known to Redis from here on
        deferred = asyncio.ensure_future(batcher.run(script, [key], ["settle"], defer=True))
        await asyncio.sleep(0.05)
        assert not deferred.done(), "a deferred call waits for company (or its linger)"
        urgent = await batcher.run(script, [key], ["admit"])
        assert (await deferred) == [b"settle", 2] and urgent == [b"admit", 3], "sent first, in order"
        assert redis.pipelines == 1, "both went in one pipeline"
    finally:
        await redis.delete(key)


async def test_a_deferred_call_alone_goes_out_after_its_linger(redis: CountingRedis, carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED, linger_s=0.05)
    script = LuaScript(redis, ECHO_INCR)
    key = f"test:batch:{uuid.uuid4().hex}"
    try:
        await batcher.run(script, [key], ["warm"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.run(script, [key], ["settle"], defer=True) == [b"settle", 2]
        assert 0.04 <= loop.time() - started < 1.0
    finally:
        await redis.delete(key)


async def test_a_script_redis_refuses_to_load_fails_with_its_own_error(redis: CountingRedis,
                                                                        carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED)
    broken = LuaScript(redis, "return {")  # a syntax error: SCRIPT LOAD refuses it
    with pytest.raises(ResponseError) as caught:
        await batcher.run(broken, [], [])
    assert not isinstance(caught.value, NoScriptError)
    # Again on the connection now open, where a batch is written at once and answered from its read.
    with pytest.raises(ResponseError) as caught:
        await batcher.run(broken, [], [])
    assert not isinstance(caught.value, NoScriptError)


# KEYS[1] a total, KEYS[2] how many times a script ran; ARGV[1] what to add ('bad' fails).
ADD = """if ARGV[1] == 'bad' then return redis.error_reply('bad argument') end
redis.call('INCR', KEYS[2]) return redis.call('INCRBY', KEYS[1], ARGV[1])"""
ADD_MANY = """for i = 1, #ARGV do
  if ARGV[i] == 'bad' then return redis.error_reply('bad argument') end
end
redis.call('INCR', KEYS[2]) local out = {}
for i = 1, #ARGV do out[i] = redis.call('INCRBY', KEYS[1], ARGV[i]) end
return out"""


class AddMerge:
    """Adds to one total merge into one ADD_MANY call, each caller getting its running total."""

    def __init__(self, many: LuaScript) -> None:
        self.many = many

    def group(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Hashable | None:
        return tuple(keys)

    def combine(self, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
                ) -> tuple[LuaScript, Sequence[Arg], Sequence[Arg]]:
        return self.many, calls[0][0], [args[0] for _, args in calls]

    def split(self, reply: Any, count: int) -> list[Any]:
        assert len(reply) == count
        return list(reply)


async def test_mergeable_calls_pending_together_run_as_one_in_order(redis: CountingRedis,
                                                                    carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED, linger_s=5.0)
    add = LuaScript(redis, ADD, merge=AddMerge(LuaScript(redis, ADD_MANY)))
    echo = LuaScript(redis, ECHO_INCR)
    name = f"test:batch:{uuid.uuid4().hex}"
    total, runs, other, other_runs, echoed = (f"{name}:{part}" for part in ("t", "r", "o", "or", "e"))
    try:
        assert await batcher.run(add, [total, runs], ["1"]) == 1  # alone: the plain script
        deferred = [asyncio.ensure_future(batcher.run(add, [total, runs], [str(n)], defer=True))
                    for n in (10, 100, 1000)]
        lone = asyncio.ensure_future(batcher.run(add, [other, other_runs], ["5"], defer=True))
        await asyncio.sleep(0.02)
        urgent = await batcher.run(echo, [echoed], ["admit"])
        assert await asyncio.gather(*deferred) == [11, 111, 1111], "each caller gets its own total, in order"
        assert await lone == 5 and urgent == [b"admit", 1]
        assert int(await redis.get(runs) or 0) == 2, "the three deferred adds ran as one script"
        assert int(await redis.get(other_runs) or 0) == 1, "another group is not merged in"
        many = await asyncio.gather(*(batcher.run(add, [total, runs], ["1"], defer=True)
                                      for _ in range(MAX_MERGED + 3)))
        assert many == list(range(1112, 1112 + MAX_MERGED + 3))
        assert int(await redis.get(runs) or 0) == 4, "at most MAX_MERGED calls per merged call"
    finally:
        await redis.delete(total, runs, other, other_runs, echoed)


async def test_a_failing_merged_call_fails_each_of_its_callers(redis: CountingRedis, carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED)
    add = LuaScript(redis, ADD, merge=AddMerge(LuaScript(redis, ADD_MANY)))
    name = f"test:batch:{uuid.uuid4().hex}"
    try:
        first = asyncio.ensure_future(batcher.run(add, [f"{name}:t", f"{name}:r"], ["2"], defer=True))
        results = await asyncio.gather(*(batcher.run(add, [f"{name}:t", f"{name}:r"], [arg], defer=True)
                                         for arg in ("1", "bad", "3")), return_exceptions=True)
        assert first.done()
        assert all(isinstance(result, ResponseError) and "bad argument" in str(result)
                   for result in [*results, first.exception()]), results
        ok = await asyncio.gather(batcher.run(add, [f"{name}:t", f"{name}:r"], ["4"], defer=True),
                                  batcher.run(add, [f"{name}:t", f"{name}:r"], ["5"], defer=True))
        assert ok == [4, 9], "nothing of the failed call was applied"
    finally:
        await redis.delete(f"{name}:t", f"{name}:r")


class UnsplittableMerge(AddMerge):
    def split(self, reply: Any, count: int) -> list[Any]:
        raise ValueError(f"cannot split {reply!r}")


async def test_a_merged_reply_that_cannot_be_split_fails_each_caller(redis: CountingRedis,
                                                                     carrier: str) -> None:
    batcher = batcher_for(redis, carrier, SHARED)
    add = LuaScript(redis, ADD, merge=UnsplittableMerge(LuaScript(redis, ADD_MANY)))
    name = f"test:batch:{uuid.uuid4().hex}"
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.run(add, [f"{name}:t", f"{name}:r"], [str(n)], defer=True)
                             for n in (1, 2)), return_exceptions=True), timeout=5)
        assert all(isinstance(result, ValueError) and "cannot split" in str(result) for result in results)
    finally:
        await redis.delete(f"{name}:t", f"{name}:r")
