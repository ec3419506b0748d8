"""Non-stream requests sent whole (``VllmAdapter.complete`` over ``engine_http.fetch_whole``) against a
raw loopback HTTP/1.1 server scripted per request, over both transports: the answer is parsed, the
body asks for no stream; a pooled connection found closed at once is stale and the request is sent
again, but one closed later (the engine may have been generating) is not; no answer within ``whole_s``
is a timeout; an oversized, unparsable or choiceless answer is an ``UpstreamError``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from backends import engine_http
from backends.engine_http import AdapterTimeouts, EngineTransport
from backends.vllm import VllmAdapter
from gateway.composition import build_transport
from gateway.errors import UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError
from gateway.types import GenerateRequest

PATIENT = AdapterTimeouts(connect_s=5, first_token_s=20, idle_s=20, probe_s=5, whole_s=20)
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "all cached"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 40, "completion_tokens": 2,
                    "prompt_tokens_details": {"cached_tokens": 32}}}
REQUEST = GenerateRequest(kind="chat", model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)


class ScriptedEngine:
    """Answers each request by the next action: ("answer", bytes), ("close", seconds) closes that
    connection after a pause without answering, ("silent", None) never answers, ("stall_body", bytes)
    sends the headers and half of the body, then nothing."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Any]] = []
        self.bodies: list[dict[str, Any]] = []
        self.heads: list[bytes] = []
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                self.heads.append(head.lower())
                self.bodies.append(json.loads(await reader.readexactly(length)))
                action, arg = self.actions.pop(0)
                if action == "close":
                    await asyncio.sleep(arg)
                    return
                if action == "silent":
                    await asyncio.sleep(3600)
                if action == "stall_body":  # the headers and half the body, then nothing
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(arg), arg[:len(arg) // 2]))
                    await writer.drain()
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(arg), arg))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def engine() -> AsyncIterator[ScriptedEngine]:
    server = ScriptedEngine()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["http1", "aiohttp"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[EngineTransport]:
    built = build_transport(request.param)
    yield built
    await built.aclose()


def answer(payload: Any) -> tuple[str, bytes]:
    return ("answer", payload if isinstance(payload, bytes) else json.dumps(payload).encode())


async def test_the_whole_answer_is_parsed_and_no_stream_is_asked(engine: ScriptedEngine,
                                                                transport: EngineTransport) -> None:
    engine.actions = [answer(ANSWER)]
    whole = await VllmAdapter(engine.url, transport, PATIENT).complete(REQUEST)
    assert (whole.text, whole.finish_reason) == ("all cached", "stop")
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens,
                                        whole.usage.cached_tokens) == (40, 2, 32)
    assert engine.bodies[0]["stream"] is False and "stream_options" not in engine.bodies[0]
    assert b"accept: application/json" in engine.heads[0]


async def test_a_pooled_connection_closed_at_once_is_stale_and_the_request_goes_again(
        engine: ScriptedEngine, transport: EngineTransport) -> None:
    adapter = VllmAdapter(engine.url, transport, PATIENT)
    engine.actions = [answer(ANSWER), ("close", 0.0), answer(ANSWER)]
    await adapter.complete(REQUEST)
    assert (await adapter.complete(REQUEST)).text == "all cached"
    assert len(engine.bodies) == 3 and engine.connections == 2


async def test_a_connection_closed_after_a_while_is_not_sent_to_the_engine_again(
        engine: ScriptedEngine, transport: EngineTransport) -> None:
    adapter = VllmAdapter(engine.url, transport, PATIENT)
    engine.actions = [answer(ANSWER), ("close", 2 * engine_http.STALE_WINDOW_S), answer(ANSWER)]
    await adapter.complete(REQUEST)
    with pytest.raises(UpstreamUnavailableError) as caught:
        await adapter.complete(REQUEST)
    assert caught.value.retryable and len(engine.bodies) == 2, "failed over, not sent again"


@pytest.mark.parametrize("action", [("silent", None), ("stall_body", json.dumps(ANSWER).encode())],
                         ids=["no-headers", "body-stalls-after-headers"])
async def test_no_whole_answer_in_time_is_a_timeout(engine: ScriptedEngine, transport: EngineTransport,
                                                    action: tuple[str, Any]) -> None:
    """One deadline covers the request and the read of its answer: a body that stalls after its
    headers times out like an engine that never answers."""
    engine.actions = [action]
    hasty = AdapterTimeouts(connect_s=5, first_token_s=20, idle_s=20, probe_s=5, whole_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError, match="whole answer"):
        await VllmAdapter(engine.url, transport, hasty).complete(REQUEST)
    assert loop.time() - started < 2.0


@pytest.mark.parametrize("body", [b"{not json", b'{"choices": []}', b"x" * 200])
async def test_a_bad_answer_is_an_upstream_error(engine: ScriptedEngine, transport: EngineTransport,
                                                 body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_http, "MAX_WHOLE_BODY", 100)
    engine.actions = [answer(body)]
    with pytest.raises(UpstreamError) as caught:
        await VllmAdapter(engine.url, transport, PATIENT).complete(REQUEST)
    assert caught.value.retryable
