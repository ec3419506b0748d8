"""The network side shared by the engine adapters: POST a JSON body and read the SSE answer with the
gateway's deadlines, plus the short GET probes (health, metrics, info).

``open_event_stream`` is an async generator of ``SseEvent`` lists, the events each read of the answer
completed (a stream keeps them together to its client: one write per read, not one per event). Before
its first event every failure is a fail-over error: connect failure -> ``UpstreamUnavailableError``,
non-2xx -> the adapter's ``error_for_response``, no event by the first-token deadline ->
``UpstreamTimeoutError``, a broken connection -> ``UpstreamError`` (a pooled connection found dead before
any answer is retried once on a new one, so a crashed engine reads as unavailable). After the first
event a broken connection or an idle gap longer than ``idle_s`` -> ``UpstreamStreamError``. Closing the
generator early closes the upstream connection (so the engine aborts the request); a stream read to its
end returns the connection to the pool.

The HTTP client is swappable: everything here goes through an ``EngineTransport`` (``AiohttpTransport``
or ``Http1Transport`` from ``backends.transports``, chosen by the composition root), which reports
connection failures with the error classes of ``backends.http1``: ``ConnectError``,
``StaleConnectionError`` (no answer on a pooled connection: retried once), ``ConnectionBrokenError``
and ``MalformedResponseError``.

``fetch_whole`` is the non-stream request: POST, then the whole answer's body within ``whole_s``; every
failure is a fail-over error. ``collect`` gathers a stream's events into one answer.

``relay`` runs an engine-specific sans-IO parser over those events, batch by batch, and applies the
same rule to what the engine itself reports: an error object or garbage before the first relayed event
is a fail-over error, after it an ``UpstreamStreamError`` (events parsed before the failure in the same
batch are relayed first, as they were one by one); a stream that ends before the engine said it was
complete is a failure too. Once the engine's end marker arrives, the rest of the body is read for a
moment only, so a server that keeps the body open cannot turn a finished answer into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from backends.http1 import (
    ConnectError,
    ConnectionBrokenError,
    Http1Error,
    StaleConnectionError,
)
from backends.http_errors import MAX_ERROR_BODY, EngineReportedError, MalformedEventError
from backends.prom_text import MetricSamples, parse_metrics
from backends.read_deadline import ReadDeadline
from backends.sse import SseDecoder, SseEvent
from backends.transports import AiohttpTransport, EngineResponse, EngineTransport, Http1Transport
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.loop_bound import Deadline, LoopRef, deadline_in
from gateway.types import Completed, EventBatch, StreamEvent

__all__ = ["AdapterTimeouts", "AiohttpTransport", "EngineTransport", "Http1Transport", "collect",
           "fetch_whole", "get_probe", "open_event_stream", "probe_health", "relay", "scrape_metrics"]

ResponseErrorMapper = Callable[[int, bytes], GatewayError]
ReportedErrorMapper = Callable[[dict[str, Any]], GatewayError]

END_GRACE_S = 1.0  # how long to wait for the body's end after the engine's end-of-stream marker
MAX_WHOLE_BODY = 64 * 1024 * 1024  # a non-stream answer larger than this is refused, not buffered
STALE_WINDOW_S = 0.25  # a pooled connection found closed within this of sending is stale, not broken
JSON_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class AdapterTimeouts:
    """Deadlines in seconds (names match the gateway's ``timeouts`` settings)."""

    connect_s: float = 2.0  # TCP connect
    first_token_s: float = 60.0  # request sent -> first event (covers connect, queueing, prefill)
    idle_s: float = 60.0  # longest gap between two events once streaming
    probe_s: float = 2.0  # whole health / metrics / info request
    whole_s: float = 600.0  # a non-stream request sent whole: the engine's whole answer, generation included


class EventParser(Protocol):
    """An engine's sans-IO stream parser (see ``openai_stream`` and ``tgi_stream``)."""

    @property
    def complete(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    def feed(self, event: SseEvent) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


async def relay(events: AsyncGenerator[list[SseEvent], None], parser: EventParser,
                error_for_report: ReportedErrorMapper, loop_ref: LoopRef) -> AsyncIterator[EventBatch]:
    """Parse ``events`` into the gateway's event batches, one per batch of SSE events that produced any
    (see the module docstring); closes ``events``. ``loop_ref``: as for ``open_event_stream``."""
    relayed = False
    async with contextlib.aclosing(events):
        async for sse_batch in events:
            parsed: EventBatch = []
            failure: Exception | None = None
            for sse in sse_batch:
                try:
                    parsed += parser.feed(sse)
                except (EngineReportedError, MalformedEventError) as exc:
                    failure = exc
                    break
                if parser.ended:
                    break
            if parsed:
                # What the engine sent before a failure in the same read still reaches the client first.
                yield parsed
                relayed = True
            if failure is not None:
                raise _failure(failure, relayed, error_for_report)
            if parser.ended:
                await _drain(events, loop_ref.get())
                break
    if not parser.complete:
        raise (UpstreamStreamError if relayed else UpstreamError)("engine ended the stream early")
    if finished := parser.finish():
        yield finished


def _failure(exc: Exception, relayed: bool, error_for_report: ReportedErrorMapper) -> GatewayError:
    """What a parser's error becomes: before the first relayed event a fail-over error, after it a
    mid-stream error."""
    if isinstance(exc, EngineReportedError):
        error = error_for_report(exc.payload)
        return UpstreamStreamError(f"engine failed mid-stream: {error.message}") if relayed else error
    return (UpstreamStreamError if relayed else UpstreamError)(str(exc))


async def _drain(events: AsyncGenerator[list[SseEvent], None], loop: asyncio.AbstractEventLoop) -> None:
    """Read the rest of an ended stream (normally just the body's end, already on its way) so the
    connection goes back to the pool; give up quietly after a moment (the connection is then closed)."""
    with contextlib.suppress(GatewayError, TimeoutError):
        async with deadline_in(loop, END_GRACE_S):
            async for _ in events:
                pass


async def open_event_stream(transport: EngineTransport, url: str, body: bytes,
                            headers: Mapping[str, str], timeouts: AdapterTimeouts,
                            error_for_response: ResponseErrorMapper,
                            loop_ref: LoopRef) -> AsyncGenerator[list[SseEvent], None]:
    """POST ``body`` to ``url`` and yield the SSE events of the answer, the events each read completed
    together (never an empty list; see the module docstring).
    ``loop_ref``: the caller's hold on the running loop (``gateway.loop_bound``: no lookup)."""
    loop = loop_ref.get()
    deadline = loop.time() + timeouts.first_token_s
    response: EngineResponse | None = None
    reached_eof = False
    timer = ReadDeadline(loop)
    try:
        response = await _post(loop, transport, url, body, headers, timeouts, deadline, error_for_response,
                               "first event", timeouts.first_token_s)
        decoder = SseDecoder()
        committed = False
        timer.deadline = deadline
        while True:
            cancelling = timer.begin_read()
            try:
                chunk = await response.read_chunk()
            except asyncio.CancelledError:
                if not timer.expired(cancelling):
                    raise
                if committed:
                    raise UpstreamStreamError(
                        f"engine sent nothing for {timeouts.idle_s:g}s mid-stream") from None
                raise UpstreamTimeoutError(
                    f"no first event from the engine within {timeouts.first_token_s:g}s") from None
            except Http1Error as exc:
                error = UpstreamStreamError if committed else UpstreamError
                raise error(f"engine connection broke: {exc}") from None
            finally:
                timer.end_read()
            if not chunk:
                reached_eof = True
                return
            if sse_batch := decoder.feed(chunk):
                yield sse_batch
                committed = True
                timer.deadline = loop.time() + timeouts.idle_s
    finally:
        timer.close()
        if response is not None:
            if reached_eof or response.at_eof():
                response.release()
            else:
                response.close()


async def _post(loop: asyncio.AbstractEventLoop, transport: EngineTransport, url: str, body: bytes,
                headers: Mapping[str, str], timeouts: AdapterTimeouts, deadline: float | None,
                error_for_response: ResponseErrorMapper, awaited: str, allowed_s: float) -> EngineResponse:
    """Send the request and return the 2xx response whose headers arrived by ``deadline`` (else "no
    ``awaited`` within ``allowed_s``": the message is only built when it is needed). ``deadline``
    None: the caller's own deadline bounds the call."""
    for attempt in (1, 2):
        response: EngineResponse | None = None
        sent = loop.time()
        try:
            async with Deadline(loop, deadline):
                response = await transport.post(url, body, headers, timeouts.connect_s)
                if response.status // 100 != 2:
                    raise error_for_response(response.status, await _read_capped(response))
                return response
        except GatewayError:
            _close(response)
            raise
        except ConnectError as exc:
            raise UpstreamUnavailableError(f"cannot connect to the engine: {exc}") from None
        except ConnectionBrokenError as exc:
            _close(response)
            if (response is None and attempt == 1 and isinstance(exc, StaleConnectionError)
                    and loop.time() - sent < STALE_WINDOW_S):
                # A pooled connection the engine had already closed (idle keep-alive, or the engine
                # died) fails at once: the request never got an answer, so send it once more on a new
                # connection. Later, it may have been generating (a non-stream answer has no headers
                # until it is done): not sent to the same engine again.
                continue
            error = UpstreamUnavailableError if response is None else UpstreamError
            raise error(f"engine connection failed: {exc}") from None
        except Http1Error as exc:
            _close(response)
            raise UpstreamError(f"engine connection failed: {exc}") from None
        except TimeoutError:
            _close(response)
            raise UpstreamTimeoutError(f"no {awaited} from the engine within {allowed_s:g}s") from None
        except BaseException:
            _close(response)
            raise
    raise AssertionError("unreachable")


async def fetch_whole(transport: EngineTransport, url: str, body: bytes, headers: Mapping[str, str],
                      timeouts: AdapterTimeouts, error_for_response: ResponseErrorMapper,
                      loop_ref: LoopRef) -> bytes:
    """POST ``body`` and return the whole body of the engine's 2xx answer, all within ``whole_s``
    (generation included: a non-stream answer's headers come only when it is done). Every failure is
    a fail-over error, as before a stream's first event: nothing has reached the client yet. One timer
    bounds the request and the read of its answer (``asyncio.timeout_at`` measured 4.6 us with a
    deadline against 1.8 us without one here: ``_post`` runs without its own). ``loop_ref`` as for
    ``open_event_stream``."""
    loop = loop_ref.get()
    response: EngineResponse | None = None
    try:
        async with deadline_in(loop, timeouts.whole_s):
            response = await _post(loop, transport, url, body, headers, timeouts, None, error_for_response,
                                   "whole answer", timeouts.whole_s)
            raw = await _read_whole(response)
    except TimeoutError:
        _close(response)
        raise UpstreamTimeoutError(f"no whole answer from the engine within {timeouts.whole_s:g}s") from None
    except Http1Error as exc:
        _close(response)
        raise UpstreamError(f"engine connection broke: {exc}") from None
    except BaseException:
        _close(response)
        raise
    response.release()
    return raw


async def _read_whole(response: EngineResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await response.read_chunk():
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_WHOLE_BODY:
            raise UpstreamError(f"the engine's answer is over {MAX_WHOLE_BODY} bytes")
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def collect(batches: AsyncIterator[EventBatch], timeouts: AdapterTimeouts) -> Completed:
    """A stream's events gathered into one answer within ``whole_s`` (for engines whose non-stream answer
    lacks something the stream has); closes ``batches``. A failure after the first event is an
    ``UpstreamStreamError``, still a fail-over error for a non-stream request."""
    try:
        async with asyncio.timeout(timeouts.whole_s):
            return await Completed.from_batches(batches)
    except TimeoutError:
        raise UpstreamTimeoutError(f"no whole answer from the engine within {timeouts.whole_s:g}s") from None
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


async def _read_capped(response: EngineResponse) -> bytes:
    """The body of an error answer, up to ``MAX_ERROR_BODY`` bytes."""
    parts: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        chunk = await response.read_chunk()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:MAX_ERROR_BODY]


def _close(response: EngineResponse | None) -> None:
    if response is not None:
        response.close()


async def get_probe(transport: EngineTransport, url: str,
                    timeouts: AdapterTimeouts) -> tuple[int, bytes]:
    """GET ``url`` within ``probe_s``: (status, body). Raises ``UpstreamUnavailableError`` when the
    engine cannot be reached and ``UpstreamTimeoutError`` when it does not answer in time."""
    try:
        return await transport.get(url, timeouts.connect_s, timeouts.probe_s)
    except ConnectError as exc:
        raise UpstreamUnavailableError(f"cannot connect to the engine: {exc}") from None
    except Http1Error as exc:
        raise UpstreamUnavailableError(f"engine probe failed: {exc}") from None
    except TimeoutError:
        raise UpstreamTimeoutError(f"engine probe took over {timeouts.probe_s:g}s") from None


async def probe_health(transport: EngineTransport, base_url: str, timeouts: AdapterTimeouts) -> bool:
    """True when the engine's ``/health`` answers 200 in time."""
    try:
        status, _ = await get_probe(transport, base_url + "/health", timeouts)
    except GatewayError:
        return False
    return status == 200


async def scrape_metrics(transport: EngineTransport, base_url: str, timeouts: AdapterTimeouts,
                         wanted: Iterable[str], engine: str) -> MetricSamples:
    """The engine's ``/metrics`` samples of the ``wanted`` families; a ``GatewayError`` when it cannot
    be scraped or parsed."""
    status, raw = await get_probe(transport, base_url + "/metrics", timeouts)
    if status != 200:
        raise UpstreamError(f"{engine} /metrics answered HTTP {status}")
    try:
        return parse_metrics(raw.decode("utf-8", "replace"), wanted)
    except ValueError as exc:
        raise UpstreamError(f"unparsable {engine} /metrics: {exc}") from None
