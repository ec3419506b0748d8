"""uvicorn in the test's own loop, and a transport recorder that keeps each ``write`` a server protocol
makes (to count system calls without strace)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


class RecordingTransport:
    """Passes every call to the real transport and keeps what was written, one entry per write."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[None]:
    """A uvicorn server for ``config`` in this loop, started on the way in and stopped on the way out."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield
    finally:
        server.should_exit = True
        await task
