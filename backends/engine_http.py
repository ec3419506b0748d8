"""The network side shared by the engine adapters: POST a JSON body and read the SSE answer with the
gateway's deadlines, plus the short GET probes (health, metrics, info).

``open_event_stream`` is an async generator of ``SseEvent``. Before its first event every failure is a
fail-over error: connect failure -> ``UpstreamUnavailableError``, non-2xx -> the adapter's
``error_for_response``, no event by the first-token deadline -> ``UpstreamTimeoutError``, a broken
connection -> ``UpstreamError`` (a pooled connection found dead before any answer is retried once on a
new one, so a crashed engine reads as unavailable). After the first event a broken connection or an
idle gap longer than ``idle_s`` -> ``UpstreamStreamError``. Closing the generator early closes the
upstream connection (so the engine aborts the request); a stream read to its end returns the
connection to the pool.

``relay`` runs an engine-specific sans-IO parser over those events and applies the same rule to what
the engine itself reports: an error object or garbage before the first relayed event is a fail-over
error, after it an ``UpstreamStreamError``; a stream that ends before the engine said it was complete
is a failure too. Once the engine's end marker arrives, the rest of the body is read for a moment
only, so a server that keeps the body open cannot turn a finished answer into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from backends.http_errors import MAX_ERROR_BODY, EngineReportedError, MalformedEventError
from backends.prom_text import MetricSamples, parse_metrics
from backends.sse import SseDecoder, SseEvent
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import StreamEvent

ResponseErrorMapper = Callable[[int, bytes], GatewayError]
ReportedErrorMapper = Callable[[dict[str, Any]], GatewayError]

END_GRACE_S = 1.0  # how long to wait for the body's end after the engine's end-of-stream marker
JSON_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class AdapterTimeouts:
    """Deadlines in seconds (names match the gateway's ``timeouts`` settings)."""

    connect_s: float = 2.0  # TCP connect
    first_token_s: float = 60.0  # request sent -> first event (covers connect, queueing, prefill)
    idle_s: float = 60.0  # longest gap between two events once streaming
    probe_s: float = 2.0  # whole health / metrics / info request


class EventParser(Protocol):
    """An engine's sans-IO stream parser (see ``openai_stream`` and ``tgi_stream``)."""

    @property
    def complete(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    def feed(self, event: SseEvent) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


async def relay(events: AsyncGenerator[SseEvent, None], parser: EventParser,
                error_for_report: ReportedErrorMapper) -> AsyncIterator[StreamEvent]:
    """Parse ``events`` into the gateway's events (see the module docstring); closes ``events``."""
    relayed = False
    async with contextlib.aclosing(events):
        async for sse in events:
            try:
                parsed = parser.feed(sse)
            except EngineReportedError as exc:
                error = error_for_report(exc.payload)
                if relayed:
                    raise UpstreamStreamError(f"engine failed mid-stream: {error.message}") from None
                raise error from None
            except MalformedEventError as exc:
                raise (UpstreamStreamError if relayed else UpstreamError)(str(exc)) from None
            for event in parsed:
                yield event
                relayed = True
            if parser.ended:
                await _drain(events)
                break
    if not parser.complete:
        raise (UpstreamStreamError if relayed else UpstreamError)("engine ended the stream early")
    for event in parser.finish():
        yield event


async def _drain(events: AsyncGenerator[SseEvent, None]) -> None:
    """Read the rest of an ended stream (normally just the body's end, already on its way) so the
    connection goes back to the pool; give up quietly after a moment (the connection is then closed)."""
    with contextlib.suppress(GatewayError, TimeoutError):
        async with asyncio.timeout(END_GRACE_S):
            async for _ in events:
                pass


async def open_event_stream(session: aiohttp.ClientSession, url: str, body: bytes,
                            headers: Mapping[str, str], timeouts: AdapterTimeouts,
                            error_for_response: ResponseErrorMapper) -> AsyncGenerator[SseEvent, None]:
    """POST ``body`` to ``url`` and yield the SSE events of the answer (see the module docstring)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.first_token_s
    response: aiohttp.ClientResponse | None = None
    reached_eof = False
    try:
        response = await _post(session, url, body, headers, timeouts, deadline, error_for_response)
        decoder = SseDecoder()
        committed = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await response.content.readany()
            except TimeoutError:
                if committed:
                    raise UpstreamStreamError(
                        f"engine sent nothing for {timeouts.idle_s:g}s mid-stream") from None
                raise UpstreamTimeoutError(
                    f"no first event from the engine within {timeouts.first_token_s:g}s") from None
            except aiohttp.ClientError as exc:
                error = UpstreamStreamError if committed else UpstreamError
                raise error(f"engine connection broke: {exc!r}") from None
            if not chunk:
                reached_eof = True
                return
            for event in decoder.feed(chunk):
                yield event
                committed = True
                deadline = loop.time() + timeouts.idle_s
    finally:
        if response is not None:
            if reached_eof or response.content.at_eof():
                response.release()
            else:
                response.close()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str],
                timeouts: AdapterTimeouts, deadline: float,
                error_for_response: ResponseErrorMapper) -> aiohttp.ClientResponse:
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeouts.connect_s)
    for attempt in (1, 2):
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.post(url, data=body, headers=headers, timeout=timeout)
                if response.status // 100 != 2:
                    raise error_for_response(response.status, await _read_capped(response))
                return response
        except GatewayError:
            _close(response)
            raise
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamUnavailableError(f"cannot connect to the engine: {exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            _close(response)
            if response is None and attempt == 1:
                # A pooled connection the engine had already closed (idle keep-alive, or the engine
                # died): the request never got an answer, so send it once more on a new connection.
                continue
            error = UpstreamUnavailableError if response is None else UpstreamError
            raise error(f"engine connection failed: {exc!r}") from None
        except aiohttp.ClientError as exc:
            _close(response)
            raise UpstreamError(f"engine connection failed: {exc!r}") from None
        except TimeoutError:
            _close(response)
            raise UpstreamTimeoutError(
                f"no first event from the engine within {timeouts.first_token_s:g}s") from None
        except BaseException:
            _close(response)
            raise
    raise AssertionError("unreachable")


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body of an error answer, up to ``MAX_ERROR_BODY`` bytes (``read(n)`` alone may stop at the
    first TCP segment)."""
    parts: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        chunk = await response.content.read(MAX_ERROR_BODY - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _close(response: aiohttp.ClientResponse | None) -> None:
    if response is not None:
        response.close()


async def get_probe(session: aiohttp.ClientSession, url: str,
                    timeouts: AdapterTimeouts) -> tuple[int, bytes]:
    """GET ``url`` within ``probe_s``: (status, body). Raises ``UpstreamUnavailableError`` when the
    engine cannot be reached and ``UpstreamTimeoutError`` when it does not answer in time."""
    timeout = aiohttp.ClientTimeout(total=timeouts.probe_s, sock_connect=timeouts.connect_s)
    try:
        async with session.get(url, timeout=timeout) as response:
            return response.status, await response.read()
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise UpstreamUnavailableError(f"cannot connect to the engine: {exc}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailableError(f"engine probe failed: {exc!r}") from None
    except TimeoutError:
        raise UpstreamTimeoutError(f"engine probe took over {timeouts.probe_s:g}s") from None


async def probe_health(session: aiohttp.ClientSession, base_url: str, timeouts: AdapterTimeouts) -> bool:
    """True when the engine's ``/health`` answers 200 in time."""
    try:
        status, _ = await get_probe(session, base_url + "/health", timeouts)
    except GatewayError:
        return False
    return status == 200


async def scrape_metrics(session: aiohttp.ClientSession, base_url: str, timeouts: AdapterTimeouts,
                         wanted: Iterable[str], engine: str) -> MetricSamples:
    """The engine's ``/metrics`` samples of the ``wanted`` families; a ``GatewayError`` when it cannot
    be scraped or parsed."""
    status, raw = await get_probe(session, base_url + "/metrics", timeouts)
    if status != 200:
        raise UpstreamError(f"{engine} /metrics answered HTTP {status}")
    try:
        return parse_metrics(raw.decode("utf-8", "replace"), wanted)
    except ValueError as exc:
        raise UpstreamError(f"unparsable {engine} /metrics: {exc}") from None
