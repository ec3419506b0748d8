"""The limiter's lean Redis connection (gateway/tenancy/resp.py) against real Redis: replies come back
per command and in order, error replies stand in their command's place, AUTH and SELECT from the URL
are applied, a dead or silent server fails every waiting batch with redis-py's exception classes within
the timeout, and the next batch reconnects (private redis-servers, conftest.py, for the destructive
cases)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.tenancy.resp import RespPipeline, pack
from tests.support.redis_server import RedisServer

SHARED = "redis://127.0.0.1:6379/0"


def pipeline_for(url: str, timeout_s: float = 2.0) -> RespPipeline:
    pipeline = RespPipeline.from_url(url, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    assert pipeline is not None
    return pipeline


@pytest.fixture
async def shared() -> AsyncIterator[RespPipeline]:
    pipeline = pipeline_for(SHARED)
    yield pipeline
    await pipeline.aclose()


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack([("SET", "k", 12), ("GET", b"k")]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")


def test_only_plain_redis_urls_get_a_pipeline() -> None:
    assert RespPipeline.from_url("rediss://host:6380/0", timeout_s=1, connect_timeout_s=1) is None
    assert RespPipeline.from_url("unix:///tmp/redis.sock", timeout_s=1, connect_timeout_s=1) is None
    assert RespPipeline.from_url("redis://user:p%40ss@host:6390/3", timeout_s=1, connect_timeout_s=1)


async def test_replies_come_back_per_command_in_order(shared: RespPipeline) -> None:
    key = f"test:resp:{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(*(shared.execute([("INCR", key), ("GET", key)]) for _ in range(20)))
        assert [r[0] for r in replies] == list(range(1, 21)), "sent in order, answered in order"
        assert [r[1] for r in replies] == [str(n).encode() for n in range(1, 21)]
        script = await shared.execute([("EVAL", "return {ARGV[1], 7, redis.call('INCR', KEYS[1])}", 1, key,
                                        "text")])
        assert script == [[b"text", 7, 21]]
    finally:
        await shared.execute([("DEL", key)])


async def test_an_error_reply_takes_its_commands_place_and_the_rest_still_run(shared: RespPipeline) -> None:
    key = f"test:resp:{uuid.uuid4().hex}"
    try:
        replies = await shared.execute([("SET", key, "1"), ("EVALSHA", "0" * 40, 0), ("LPUSH", key, "x"),
                                        ("INCR", key)])
        assert replies[0] == b"OK"
        assert isinstance(replies[1], NoScriptError)
        assert isinstance(replies[2], ResponseError) and not isinstance(replies[2], NoScriptError)
        assert replies[3] == 2, "commands after an error ran"
    finally:
        await shared.execute([("DEL", key)])


async def test_auth_and_select_from_the_url_are_applied(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", "s3cr@t")
        admin.close()
        good = pipeline_for(f"redis://:s3cr%40t@127.0.0.1:{server.port}/5")
        assert await good.execute([("SET", "k", "v")]) == [b"OK"]
        check = redis.Redis(port=server.port, password="s3cr@t", db=5)
        assert check.get("k") == b"v", "the key landed in database 5"
        check.close()
        await good.aclose()
        bad = pipeline_for(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisConnectionError, match="setup"):
            await bad.execute([("PING",)])
        await bad.aclose()
    finally:
        server.kill()


async def test_a_dead_server_fails_every_waiting_batch_and_a_restart_is_reconnected(
        private_redis: RedisServer) -> None:
    pipeline = pipeline_for(private_redis.url)
    try:
        assert await pipeline.execute([("PING",)]) == [b"PONG"]
        blocked = [asyncio.ensure_future(pipeline.execute([("BLPOP", "never", 0)])) for _ in range(3)]
        await asyncio.sleep(0.1)
        private_redis.kill()
        results = await asyncio.gather(*blocked, return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await pipeline.execute([("PING",)])
        private_redis.start()
        assert await pipeline.execute([("PING",)]) == [b"PONG"], "the next batch reconnects"
    finally:
        await pipeline.aclose()


async def test_a_silent_server_times_out_within_the_timeout(private_redis: RedisServer) -> None:
    pipeline = pipeline_for(private_redis.url, timeout_s=0.3)
    assert private_redis.process is not None
    try:
        assert await pipeline.execute([("PING",)]) == [b"PONG"]
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await asyncio.gather(pipeline.execute([("PING",)]), pipeline.execute([("PING",)]),
                                           return_exceptions=True)
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        waited = loop.time() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.25 <= waited < 1.5, waited
        assert await pipeline.execute([("PING",)]) == [b"PONG"], "a new connection after the timeout"
    finally:
        await pipeline.aclose()


async def test_a_caller_cancelled_while_waiting_does_not_disturb_the_next_replies(
        shared: RespPipeline) -> None:
    key = f"test:resp:{uuid.uuid4().hex}"
    try:
        assert await shared.execute([("PING",)]) == [b"PONG"]  # connected: the next batch is sent at once
        slow = asyncio.ensure_future(shared.execute([("EVAL", "local t = redis.call('TIME') "
                                                      "return redis.call('INCR', KEYS[1])", 1, key)]))
        await asyncio.sleep(0)
        slow.cancel()
        assert await shared.execute([("INCR", key)]) == [2], "the cancelled batch's reply was consumed"
    finally:
        await shared.execute([("DEL", key)])


def test_it_runs_on_uvloop_as_the_gateway_does() -> None:
    import uvloop

    async def exchange() -> list[object]:
        pipeline = pipeline_for(SHARED)
        try:
            return await pipeline.execute([("PING",), ("ECHO", "uv")])
        finally:
            await pipeline.aclose()

    assert uvloop.run(exchange()) == [b"PONG", b"uv"]
