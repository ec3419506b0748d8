"""A labelled stand-in engine for tests (not a real engine): a loopback aiohttp server in the test's own
loop that answers each path with the ``Reply`` a test sets (a transcript, an error, a stream in chosen
pieces, a stall or a dropped connection) and keeps what it was sent."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """What the fake engine answers on one path."""

    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    content_type: str = "text/event-stream"
    then: str = "end"  # "end" the body, "stall" (keep-alive comments until the client leaves), "drop"
    gap_s: float = 0.0  # pause between two chunks


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    peer: Any


class FakeEngine:
    """A loopback aiohttp server answering each path with its ``Reply``."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self.client_left = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.path, dict(request.headers), json.loads(raw) if raw else None,
                              request.transport.get_extra_info("peername") if request.transport else None))
        reply = self.replies.get(request.path, Reply(status=404, chunks=[b'{"detail":"Not Found"}'],
                                                     content_type="application/json"))
        response = web.StreamResponse(status=reply.status, headers={"content-type": reply.content_type})
        try:
            await response.prepare(request)
            for chunk in reply.chunks:
                await response.write(chunk)
                await asyncio.sleep(reply.gap_s)
            if reply.then == "drop" and request.transport is not None:
                request.transport.abort()
                return response
            for _ in range(500 if reply.then == "stall" else 0):
                await asyncio.sleep(0.02)
                await response.write(b":\n\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.client_left.set()
            raise
        return response
