"""HTTP plumbing shared by the simulated engine's dialects: JSON in and out, SSE streams, dropping a
connection, and running one generation with faults applied and the engine request always released."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from backends.sim.engine import Engine
from backends.sim.faults import FaultSpec, apply_faults
from backends.sim.request import SamplingParams, SimRequest

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
encode = _encoder.encode


class BadJSON(ValueError):
    """The body is not JSON; ``msg``, ``pos``, ``lineno``, ``colno`` as Python's json module says."""

    def __init__(self, msg: str, pos: int, lineno: int, colno: int) -> None:
        super().__init__(msg)
        self.msg, self.pos, self.lineno, self.colno = msg, pos, lineno, colno


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode(body), status=status, headers=headers, content_type="application/json")


def parse_json(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        pass
    # The slow path only for errors: the stdlib's messages are what FastAPI (vLLM) reports.
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadJSON(exc.msg, exc.pos, exc.lineno, exc.colno) from None
    except UnicodeDecodeError as exc:
        raise BadJSON("Invalid UTF-8", exc.start, 1, exc.start + 1) from None


async def read_json(request: web.Request) -> Any:
    return parse_json(await request.read())


async def start_sse(request: web.Request, content_type: str,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type.split(";")[0]
    if "charset=" in content_type:
        response.charset = content_type.split("charset=")[1]
    await response.prepare(request)
    await response.write(b"")  # aiohttp holds headers back until the first body bytes; engines do not
    return response


def drop_connection(request: web.Request) -> None:
    """Close the client's connection abruptly, mid-response (a crashed or cut-off engine)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


@dataclass
class Generation:
    request: SimRequest
    batches: AsyncIterator[tuple[list[str], bool]]
    # No token-level faults: the stream may be written straight from the engine step (see ``pump``).
    direct: bool


@asynccontextmanager
async def generation(engine: Engine, tokens: list[str], params: SamplingParams,
                     faults: FaultSpec) -> AsyncIterator[Generation]:
    """Submit one request; whatever happens to the caller (disconnect, fault, error), the engine
    request is aborted on the way out unless it finished, so it stops running and frees its blocks."""
    request = await engine.submit(tokens, params)
    try:
        stream = engine.stream(request)
        faulty = faults.per_token or faults.stall_before > 0
        yield Generation(request, apply_faults(faults, stream) if faulty else stream, not faulty)
    finally:
        request.sink = None
        engine.abort(request)


FormatBatch = Callable[[list[str], bool], bytes]


async def pump(http_request: web.Request, response: web.StreamResponse, gen: Generation,
               format_batch: FormatBatch) -> None:
    """Write a generation's stream: ``format_batch(tokens, finished)`` gives the bytes of each batch.

    Without token-level faults the bytes are written from inside the engine step (one chunked frame per
    step per stream, no task switch per token); that is what lets one process serve hundreds of
    streams. With faults, the handler iterates the (fault-applying) batches itself."""
    if not gen.direct:
        async for batch, done in gen.batches:
            data = format_batch(batch, done)
            if data:
                await response.write(data)
        return
    transport = http_request.transport
    sim = gen.request

    def sink(batch: list[str], done: bool) -> None:
        if transport is None or transport.is_closing():
            sim.sink = None
            sim.wake.set()  # the handler notices the closed connection and leaves
            return
        try:
            data = format_batch(batch, done)
        except Exception:  # never let a formatting bug kill the engine loop
            log.exception("stream formatting failed")
            sim.sink = None
            sim.wake.set()
            return
        if data:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    backlog = list(sim.output)
    sim.sink = sink
    if backlog or sim.finished:
        sink(backlog, sim.finished)
    while not sim.finished:
        sim.wake.clear()
        await sim.wake.wait()
        if sim.sink is None:
            raise ConnectionResetError("client connection closed")
