"""The HTTP clients the engine adapters can use, behind one small interface: ``EngineTransport`` (POST
with a streamed body, GET with a whole body) and ``EngineResponse``. ``Http1Transport`` is the gateway's
own HTTP/1.1 client (``backends.http1``), the default, chosen by measurement (benchmarks/http_clients.py:
about half aiohttp's CPU per streamed request); ``AiohttpTransport`` wraps aiohttp and translates its
exceptions into ``backends.http1``'s error classes so the callers handle one set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from backends.http1 import (
    ConnectError,
    ConnectionBrokenError,
    Http1Client,
    MalformedResponseError,
    StaleConnectionError,
)


class EngineResponse(Protocol):
    """An engine's answer once its status and headers are in; the body comes chunk by chunk."""

    @property
    def status(self) -> int: ...

    async def read_chunk(self) -> bytes:
        """The next body bytes (``b""`` at the end); an ``Http1Error`` when the connection breaks."""
        ...

    def at_eof(self) -> bool:
        """True once the whole body was read."""
        ...

    def release(self) -> None:
        """Done, body read: the connection may be reused."""
        ...

    def close(self) -> None:
        """Done early: close the connection now (the engine sees the disconnect)."""
        ...


class EngineTransport(Protocol):
    """The HTTP client the adapters use (one per gateway, shared by all adapters)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   connect_s: float) -> EngineResponse:
        """Send a POST; return when the response headers are in. No deadline besides ``connect_s`` for
        opening a new connection (callers wrap the call in ``asyncio.timeout``)."""
        ...

    async def get(self, url: str, connect_s: float, total_s: float) -> tuple[int, bytes]:
        """GET the whole answer within ``total_s`` (``TimeoutError`` otherwise): (status, body)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


class AiohttpTransport:
    """``EngineTransport`` over an ``aiohttp.ClientSession``; aiohttp's errors become ``Http1Error``s
    carrying the original error's text."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   connect_s: float) -> EngineResponse:
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_s)
        try:
            response = await self._session.post(url, data=body, headers=headers, timeout=timeout)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectError(str(exc)) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # Disconnected before the headers: aiohttp cannot tell a pooled connection from a new one,
            # and the gateway has always retried this once.
            raise StaleConnectionError(repr(exc)) from None
        except aiohttp.ClientError as exc:
            raise MalformedResponseError(repr(exc)) from None
        return _AiohttpResponse(response)

    async def get(self, url: str, connect_s: float, total_s: float) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s)
        try:
            async with self._session.get(url, timeout=timeout) as response:
                return response.status, await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectError(str(exc)) from None
        except aiohttp.ClientError as exc:
            raise ConnectionBrokenError(repr(exc)) from None

    async def aclose(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    __slots__ = ("_response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    async def read_chunk(self) -> bytes:
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise ConnectionBrokenError(repr(exc)) from None

    def at_eof(self) -> bool:
        return self._response.content.at_eof()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class Http1Transport:
    """``EngineTransport`` over ``backends.http1.Http1Client`` (whose responses fit ``EngineResponse``
    as they are)."""

    def __init__(self, client: Http1Client) -> None:
        self._client = client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   connect_s: float) -> EngineResponse:
        return await self._client.request("POST", url, headers, body, connect_timeout=connect_s)

    async def get(self, url: str, connect_s: float, total_s: float) -> tuple[int, bytes]:
        async with asyncio.timeout(total_s):
            return await self._client.get(url, connect_timeout=connect_s)

    async def aclose(self) -> None:
        await self._client.aclose()
