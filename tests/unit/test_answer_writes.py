"""What the gateway writes to its client, and when. A stream: the events one read of the engine's answer
completed leave in one write, each still its own SSE event, and the stream's last bytes leave with the
end of the body. A whole answer: it leaves before the request is recorded (metrics, the lease's
settlement), which still happens, also when rendering the answer fails.

The gateway is the real one, built in-process by the composition root and served by real uvicorn with the
gateway's HTTP protocol; a recorder under the protocol keeps every write. The engine is the labelled
stand-in of tests/support/fake_engine.py (an aiohttp server in the test's loop) answering a vLLM-shaped
stream in the pieces each test chooses, a pause between pieces, so that what one read of the gateway
gets is known."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backends.launchers.process import free_port
from gateway.app import create_app
from gateway.composition import build_gateway
from gateway.http_protocol import GatewayHttpProtocol
from gateway.pipeline import OnDone
from gateway.render_openai import OpenAIRenderer
from gateway.service import Gateway
from gateway.settings import parse_settings
from gateway.tenancy import Lease
from gateway.types import GenerateRequest, Usage
from tests.support.fake_engine import FakeEngine, Reply
from tests.support.uvicorn_server import RecordingTransport, serving

MODEL = "m"
GAP_S = 0.05  # between two pieces of the engine's answer: long enough that each is its own read


def completion_event(text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


USAGE = b"data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL,
                                "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3,
                                                         "total_tokens": 6}}).encode() + b"\n\n"
DONE = b"data: [DONE]\n\n"


WHOLE_ANSWER = json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL,
                           "choices": [{"index": 0, "text": "abc", "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode()


def answer_in_pieces(engine: FakeEngine, pieces: list[bytes]) -> None:
    """The engine's stream, each piece in one write, ``GAP_S`` apart."""
    engine.replies["/v1/completions"] = Reply(chunks=pieces, gap_s=GAP_S)


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    """The labelled stand-in vLLM server of test_adapters_http, answering as an idle vLLM on its probes."""
    fake = FakeEngine()
    fake.replies["/health"] = Reply(content_type="text/plain")
    fake.replies["/metrics"] = Reply(content_type="text/plain", chunks=[b"vllm:num_requests_running 0\n"])
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class InProcess:
    url: str
    writes: list[bytes]  # every write to a client, in order
    gateway: Gateway


@contextlib.asynccontextmanager
async def served(engine: FakeEngine, protocol: type[HttpToolsProtocol]) -> AsyncIterator[InProcess]:
    """The gateway in front of ``engine``, served by uvicorn with ``protocol`` under a write recorder."""
    writes: list[bytes] = []

    class Recorded(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(RecordingTransport(transport, writes))

    backend = {"name": "e", "kind": "vllm", "url": engine.url, "models": [MODEL]}
    settings = parse_settings({"backends": [backend], "server": {"log_level": "warning"}})
    port = free_port()
    built = build_gateway(settings, {"e": engine.url})
    config = uvicorn.Config(create_app(built), host="127.0.0.1", port=port, http=Recorded, loop="none",
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    async with serving(config):
        yield InProcess(f"http://127.0.0.1:{port}", writes, built)


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[InProcess]:
    async with served(engine, GatewayHttpProtocol) as gateway:
        yield gateway


ROUTES: dict[str, dict[str, Any]] = {
    "openai": {"path": "/v1/completions", "body": {"model": MODEL, "prompt": "p", "max_tokens": 3,
                                                   "stream": True,
                                                   "stream_options": {"include_usage": True}}},
    "native": {"path": "/generate", "body": {"prompt": "p", "max_tokens": 3, "stream": True}},
    "tgi": {"path": "/generate_stream", "body": {"inputs": "p", "parameters": {"max_new_tokens": 3}}},
}


async def stream_writes(served: InProcess, dialect: str) -> tuple[list[bytes], list[str]]:
    """The writes of one stream's answer (head first) and the data of the SSE events the client got."""
    route = ROUTES[dialect]
    writes = served.writes
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        await client.get("/health")  # the connection is open: what follows is the stream's alone
        writes.clear()
        async with client.stream("POST", route["path"], json=route["body"]) as response:
            assert response.status_code == 200
            body = b"".join([part async for part in response.aiter_bytes()])
    lines = body.decode().split("\n")
    events = [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]
    return list(writes), events


async def test_events_read_together_leave_together(engine: FakeEngine,
                                                   gateway: InProcess) -> None:
    answer_in_pieces(engine, [completion_event("a") + completion_event("b"),
                              completion_event("c", "length") + USAGE + DONE])
    writes, events = await stream_writes(gateway, "openai")
    assert [json.loads(e)["choices"][0]["text"] for e in events[:3]] == ["a", "b", "c"]
    assert json.loads(events[3])["usage"]["completion_tokens"] == 3 and events[4] == "[DONE]"
    assert len(events) == 5
    # Head; "a" and "b" in one write; "c"; the usage chunk, [DONE] and the body's end in one write.
    assert len(writes) == 4, writes
    assert writes[1].count(b"data: ") == 2 and writes[2].count(b"data: ") == 1
    assert writes[3].count(b"data: ") == 2 and writes[3].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(("dialect", "expected_writes"), [("openai", 3), ("native", 3), ("tgi", 3)])
async def test_a_burst_is_one_write_in_every_dialect(engine: FakeEngine, gateway: InProcess,
                                                     dialect: str, expected_writes: int) -> None:
    """The whole answer in one read: the head, the events, and the last event with the body's end (TGI
    holds its finishing token for the last event, which carries the details)."""
    answer_in_pieces(engine, [completion_event("a") + completion_event("b") + completion_event("c", "length")
                              + USAGE + DONE])
    writes, events = await stream_writes(gateway, dialect)
    assert len(writes) == expected_writes, writes
    assert writes[-1].endswith(b"\r\n0\r\n\r\n")
    if dialect == "openai":
        assert len(events) == 5 and events[-1] == "[DONE]"
    elif dialect == "native":
        assert [json.loads(e).get("text") for e in events] == ["a", "b", "c", ""]
    else:
        tokens = [json.loads(e) for e in events]
        assert [t["token"]["text"] for t in tokens] == ["a", "b", "c"]
        assert tokens[-1]["generated_text"] == "abc"


WHOLE = {"model": MODEL, "prompt": "p", "max_tokens": 3}


def served_ok(served: InProcess) -> float | None:
    labels = {"model": MODEL, "backend": "e", "dialect": "openai_completion", "outcome": "ok"}
    return served.gateway.prometheus.get_sample_value("gateway_requests_total", labels)


def hold_recording(served: InProcess) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the gateway's recording of each request (metrics, settlement) wait for the first event;
    the second is set once a request is recorded."""
    release, recorded = asyncio.Event(), asyncio.Event()
    pipeline = served.gateway.pipeline
    real = pipeline.on_done

    def held(request: GenerateRequest, dialect: str, lease: Lease, started: float) -> OnDone:
        done = real(request, dialect, lease, started)

        async def later(backend: str, usage: Usage | None, outcome: str, chunks: int) -> None:
            await release.wait()
            await done(backend, usage, outcome, chunks)
            recorded.set()
        return later

    pipeline.on_done = held  # type: ignore[method-assign]
    return release, recorded


async def test_a_whole_answer_leaves_before_its_request_is_recorded(engine: FakeEngine,
                                                                   gateway: InProcess) -> None:
    """The metrics and the settlement are off the answer's path: the client has its answer while the
    recording is still held, and the request is recorded once it is let go."""
    engine.replies["/v1/completions"] = Reply(content_type="application/json", chunks=[WHOLE_ANSWER])
    release, recorded = hold_recording(gateway)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=3) as client:
            response = await client.post("/v1/completions", json=WHOLE)
        assert response.status_code == 200 and response.json()["choices"][0]["text"] == "abc"
        assert not recorded.is_set() and served_ok(gateway) is None
    finally:
        release.set()
    await asyncio.wait_for(recorded.wait(), 5)
    assert served_ok(gateway) == 1


@pytest.mark.parametrize("dialect", ["openai", "native", "tgi"])
async def test_a_stream_ends_before_its_request_is_recorded(engine: FakeEngine, gateway: InProcess,
                                                            dialect: str) -> None:
    """As for a whole answer: the client reads the stream to its end while the recording is held."""
    answer_in_pieces(engine, [completion_event("a") + completion_event("b", "length") + USAGE + DONE])
    release, recorded = hold_recording(gateway)
    try:
        _, events = await asyncio.wait_for(stream_writes(gateway, dialect), 3)
        assert len(events) >= 2 and not recorded.is_set()  # TGI: "a", then "b" with the details
    finally:
        release.set()
    await asyncio.wait_for(recorded.wait(), 5)
    backend = gateway.gateway.registry["e"]
    assert backend.in_flight == 0


async def test_a_request_whose_answer_fails_to_render_is_still_recorded(
        engine: FakeEngine, gateway: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.replies["/v1/completions"] = Reply(content_type="application/json", chunks=[WHOLE_ANSWER])
    def broken(*_: Any) -> bytes:
        raise RuntimeError("rendering bug")

    monkeypatch.setattr(OpenAIRenderer, "response", broken)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.post("/v1/completions", json=WHOLE)
    assert response.status_code == 500 and response.json()["error"]["message"] == "internal error"
    assert served_ok(gateway) == 1


@pytest.mark.parametrize("protocol", [GatewayHttpProtocol, HttpToolsProtocol],
                         ids=["gateway protocol", "plain uvicorn"])
async def test_a_client_leaving_a_stream_closes_the_engine_request(engine: FakeEngine,
                                                                   protocol: type[HttpToolsProtocol]) -> None:
    """Leaving after the first event closes the engine request at once and returns the in-flight count,
    over the gateway's own server protocol and under plain uvicorn."""
    engine.replies["/v1/completions"] = Reply(chunks=[completion_event("a")], then="stall")
    async with served(engine, protocol) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            async with client.stream("POST", "/v1/completions", json=ROUTES["openai"]["body"]) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # the engine keeps the stream open: only the client's leaving ends it
        await asyncio.wait_for(engine.client_left.wait(), 5)
        backend = gateway.gateway.registry["e"]
        for _ in range(100):
            if backend.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert backend.in_flight == 0
