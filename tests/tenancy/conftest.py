"""Fixtures for tenancy tests: the shared Redis at 127.0.0.1:6379 under a unique key prefix per test
(its keys deleted afterwards, never a flush), private redis-server processes that tests may kill and
restart (by PID), both limiter stores, and Admissions built from tenancy config."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.tenancy import Admission, TenancyConfig
from gateway.tenancy.memory_store import MemoryLimitStore
from gateway.tenancy.redis_store import RedisLimitStore, connect, fast_pipeline
from gateway.tenancy.store import LimitStore
from tests.support.redis_server import RedisServer

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def prefix() -> str:
    return f"test:tenancy:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def shared_redis(prefix: str) -> AsyncIterator[Redis]:
    # Generous: these tests check decisions, not latency, and CI's 2 cores can starve Redis for a while
    # (outage tests use their own private server and tight timeouts).
    client = connect(SHARED_REDIS, 5.0)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["memory", "redis", "redis-resp"])
async def store(request: pytest.FixtureRequest, shared_redis: Redis) -> AsyncIterator[LimitStore]:
    """Each limit store; Redis both with redis-py carrying the scripts and with the lean connection."""
    if request.param == "memory":
        yield MemoryLimitStore()
        return
    pipeline = fast_pipeline(SHARED_REDIS, 5.0) if request.param == "redis-resp" else None
    redis_store = RedisLimitStore(shared_redis, pipeline)
    yield redis_store
    await redis_store.aclose()


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


MakeAdmission = Callable[..., Admission]


@pytest.fixture
async def make_admission(prefix: str, shared_redis: Redis) -> AsyncIterator[MakeAdmission]:
    """Builds Admissions (closed after the test): ``make(store, **tenancy_config)``; redis ones use
    the shared Redis under the test's prefix unless the config names another URL."""
    made: list[Admission] = []

    def make(store: str, registry: CollectorRegistry | None = None, **config: Any) -> Admission:
        base: dict[str, Any] = {"store": store}
        if store == "redis":
            base |= {"redis_url": SHARED_REDIS, "redis_prefix": prefix, "redis_timeout_s": 2.0}
        admission = Admission(TenancyConfig.model_validate(base | config),
                              registry=registry or CollectorRegistry())
        made.append(admission)
        return admission

    yield make
    for admission in made:
        await admission.aclose()
