"""The minimal raw ASGI app benchmarks/asgi_servers.py serves: read the body, answer a fixed JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

BODY = (b'{"id":"x","object":"text_completion","choices":[{"index":0,"text":"hello world",'
        b'"finish_reason":"length"}]}')
HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


RSGI_HEADERS = [("content-type", "application/json")]


async def rsgi_app(scope: Any, protocol: Any) -> None:
    """The same answer over granian's RSGI interface (no per-message dicts): how much a server interface
    without ASGI's messages would save, for the issue 6 notes."""
    if scope.proto != "http":
        return
    await protocol()
    protocol.response_bytes(200, RSGI_HEADERS, BODY)
