"""Both adapters over real loopback HTTP against a small aiohttp server that replays transcripts (the
recorded vLLM ones, the TGI ones built from tgi-openapi.json) or misbehaves on purpose: bodies sent,
events relayed, error mapping, deadlines, broken connections, cancellation, health and metrics.

Over 400 lines on purpose: both adapters are tested against the same fake engine
(``tests/support/fake_engine.py``) with the same cases, parametrized, in one module."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.engine_http import AdapterTimeouts, EngineTransport
from backends.tgi import TgiAdapter
from backends.vllm import VllmAdapter
from gateway.composition import build_transport
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import Delta, EventBatch, GenerateRequest, StreamEvent, Usage
from tests.support.fake_engine import FakeEngine, Reply

DATA = Path(__file__).resolve().parents[1] / "data"
PATIENT = AdapterTimeouts(connect_s=5, first_token_s=20, idle_s=20, probe_s=5)
HASTY = AdapterTimeouts(connect_s=5, first_token_s=0.3, idle_s=0.3, probe_s=5)
Adapter = VllmAdapter | TgiAdapter


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(params=["aiohttp", "http1"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[EngineTransport]:
    """Every test runs over both HTTP clients the gateway can use."""
    client: EngineTransport = build_transport(request.param)
    yield client
    await client.aclose()


def split_randomly(raw: bytes, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, max(1, len(raw) // 40))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


async def collect(batches: AsyncIterator[EventBatch]) -> list[StreamEvent]:
    """A stream's events, its batches flattened."""
    return [event async for batch in batches for event in batch]


def make(kind: str, url: str, transport: EngineTransport,
         timeouts: AdapterTimeouts = PATIENT) -> Adapter:
    return VllmAdapter(url, transport, timeouts) if kind == "vllm" else TgiAdapter(url, transport, timeouts)


def completion_path(kind: str) -> str:
    return "/v1/completions" if kind == "vllm" else "/generate_stream"


def token(kind: str, text: str, finish: str | None = None) -> bytes:
    """One completion stream event in the engine's own format."""
    if kind == "vllm":
        return b"data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
                                      ).encode() + b"\n\n"
    details = None if finish is None else {"finish_reason": finish, "generated_tokens": 2, "input_length": 3}
    return b"data:" + json.dumps({"index": 1, "token": {"id": 5, "text": text, "logprob": 0.0,
                                                        "special": False},
                                  "generated_text": None, "details": details}).encode() + b"\n\n"


def tail(kind: str) -> list[bytes]:
    if kind == "vllm":
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        return [token(kind, "b", "length"), b"data: " + json.dumps(usage).encode() + b"\n\n",
                b"data: [DONE]\n\n"]
    return [token(kind, "b", "length")]


COMPLETION = GenerateRequest(kind="completion", model="tiny-llama", prompt="p", max_tokens=2)
KINDS = ["vllm", "tgi"]


# --- vLLM ----------------------------------------------------------------------------------------

async def test_vllm_chat_relays_the_recorded_stream(engine: FakeEngine,
                                                    transport: EngineTransport) -> None:
    facts = json.loads((DATA / "vllm/chat_stream_usage.json").read_text())
    engine.replies["/v1/chat/completions"] = Reply(chunks=split_randomly(
        (DATA / "vllm/chat_stream_usage.sse").read_bytes()))
    request = GenerateRequest(kind="chat", model="tiny-llama", messages=facts["request"]["messages"],
                              max_tokens=8, temperature=0.0, extra={"ignore_eos": True}, fault="slow")
    adapter = VllmAdapter(engine.url + "/", transport, PATIENT, api_key="k")
    events = await collect(adapter.stream(request))
    deltas = [e for e in events if isinstance(e, Delta)]
    assert deltas[0] == Delta(role="assistant", text="") and len(deltas) == facts["choice_events"]
    assert "".join(d.text for d in deltas) == facts["text"]
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"] == [deltas[-1].finish_reason]
    assert events[-1] == Usage(prompt_tokens=34, completion_tokens=8, cached_tokens=0)
    seen = engine.seen[0]
    assert seen.body == {**facts["request"], "stream_options": {"include_usage": True}}
    assert seen.headers["x-sim-fault"] == "slow" and seen.headers["Authorization"] == "Bearer k"


async def test_vllm_recorded_error_keeps_param(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/v1/completions"] = Reply(
        status=400, content_type="application/json",
        chunks=split_randomly((DATA / "vllm/error_max_tokens.sse").read_bytes(), seed=3))
    with pytest.raises(InvalidRequestError) as caught:
        await collect(make("vllm", engine.url, transport).stream(COMPLETION))
    assert caught.value.param == "max_tokens" and not caught.value.retryable


async def test_vllm_in_stream_error_after_first_event(engine: FakeEngine,
                                                      transport: EngineTransport) -> None:
    error = {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}
    engine.replies["/v1/completions"] = Reply(chunks=[token("vllm", "a"),
                                                      b"data: " + json.dumps(error).encode() + b"\n\n"])
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamStreamError, match="engine died"):
        async for batch in make("vllm", engine.url, transport).stream(COMPLETION):
            received += batch
    assert received == [Delta(text="a")]


VLLM_METRICS = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.125
vllm:prefix_cache_queries_total{engine="0",model_name="tiny-llama"} 1024.0
vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 256.0
vllm:num_preemptions_total{engine="0",model_name="tiny-llama"} 1.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",engine="0",""" \
    """num_gpu_blocks="256",num_gpu_blocks_override="256"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny-llama"} 3.0
"""


async def test_vllm_load_and_health(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/metrics"] = Reply(chunks=[VLLM_METRICS.encode()], content_type="text/plain")
    engine.replies["/health"] = Reply(chunks=[], content_type="text/plain")
    adapter = make("vllm", engine.url, transport)
    load = await adapter.load()
    assert (load.running, load.waiting, load.kv_cache_usage) == (2.0, 5.0, 0.125)
    assert (load.prefix_cache_queries, load.prefix_cache_hits, load.preemptions) == (1024.0, 256.0, 1.0)
    assert (load.block_size, load.num_blocks, load.max_concurrent) == (128, 256, None)
    assert await adapter.health()
    engine.replies["/health"] = Reply(status=503, chunks=[b"{}"], content_type="application/json")
    assert not await adapter.health()


# --- TGI -----------------------------------------------------------------------------------------

async def test_tgi_completion_uses_generate_stream(engine: FakeEngine,
                                                   transport: EngineTransport) -> None:
    engine.replies["/generate_stream"] = Reply(chunks=split_randomly(
        (DATA / "tgi/generate_stream_length.sse").read_bytes()))
    request = GenerateRequest(kind="completion", model="m", prompt="What is", max_tokens=7, temperature=0.0,
                              extra={"ignore_eos": True})
    events = await collect(make("tgi", engine.url, transport).stream(request))
    assert len(events) == 8 and events[-1] == Usage(prompt_tokens=5, completion_tokens=7)
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text == " Deep learning is caf\u00e9 \u65e5\u672c \U0001F600"
    parameters = {"max_new_tokens": 7, "do_sample": False, "details": True}
    assert engine.seen[0].body == {"inputs": "What is", "parameters": parameters}


async def test_tgi_stop_sequence_is_cut(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/generate_stream"] = Reply(chunks=split_randomly(
        (DATA / "tgi/generate_stream_stop_sequence.sse").read_bytes()))
    request = GenerateRequest(kind="completion", model="m", prompt="Count:", stop=["\n\n"])
    events = await collect(make("tgi", engine.url, transport).stream(request))
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == " one, two, three" and deltas[-1].finish_reason == "stop"


async def test_tgi_generation_error_mid_stream(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/generate_stream"] = Reply(chunks=[
        (DATA / "tgi/generate_stream_error_generation.sse").read_bytes()])
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamStreamError, match="CUDA out of memory"):
        async for batch in make("tgi", engine.url, transport).stream(COMPLETION):
            received += batch
    assert received == [Delta(text=" Once"), Delta(text=" upon")]


@pytest.mark.parametrize(("name", "error", "param"), [
    ("generate_stream_error_overloaded.sse", UpstreamUnavailableError, None),
    ("generate_stream_error_validation.sse", InvalidRequestError, "max_tokens"),
])
async def test_tgi_error_event_before_any_token(engine: FakeEngine, transport: EngineTransport, name: str,
                                                error: type[GatewayError], param: str | None) -> None:
    engine.replies["/generate_stream"] = Reply(chunks=[(DATA / "tgi" / name).read_bytes()])
    with pytest.raises(error) as caught:
        await collect(make("tgi", engine.url, transport).stream(COMPLETION))
    assert caught.value.param == param


@pytest.mark.parametrize(("status", "body", "error", "param"), [
    (422, {"error": "Input validation error: `top_p` must be > 0.0 and < 1.0", "error_type": "validation"},
     InvalidRequestError, "top_p"),
    (429, {"error": "Model is overloaded", "error_type": "overloaded"}, UpstreamUnavailableError, None),
    (424, {"error": "Request failed during generation", "error_type": "generation"}, UpstreamError, None),
])
async def test_tgi_error_statuses(engine: FakeEngine, transport: EngineTransport, status: int,
                                  body: dict[str, str], error: type[GatewayError], param: str | None) -> None:
    engine.replies["/v1/chat/completions"] = Reply(status=status, content_type="application/json",
                                                   chunks=[json.dumps(body).encode()])
    request = GenerateRequest(kind="chat", model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(error) as caught:
        await collect(make("tgi", engine.url, transport).stream(request))
    assert type(caught.value) is error and caught.value.param == param


async def test_tgi_chat_uses_the_messages_api(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/v1/chat/completions"] = Reply(chunks=split_randomly(
        (DATA / "tgi/chat_stream_usage.sse").read_bytes()))
    request = GenerateRequest(kind="chat", model="m", messages=[{"role": "user", "content": "x"}],
                              max_tokens=4)
    events = await collect(make("tgi", engine.url, transport).stream(request))
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Bonjour \u00e0 tous"
    assert events[-1] == Usage(prompt_tokens=11, completion_tokens=4)
    assert engine.seen[0].body["stream_options"] == {"include_usage": True}


async def test_tgi_too_many_stops_never_reach_the_engine(engine: FakeEngine,
                                                        transport: EngineTransport) -> None:
    request = GenerateRequest(kind="completion", model="m", prompt="p", stop=list("abcde"))
    with pytest.raises(InvalidRequestError) as caught:
        await collect(make("tgi", engine.url, transport).stream(request))
    assert caught.value.param == "stop" and engine.seen == []


TGI_METRICS = """# TYPE tgi_queue_size gauge
tgi_queue_size 3
tgi_batch_current_size 4
tgi_batch_current_max_tokens 2048
tgi_request_duration_bucket{le="0.1"} 2
"""


async def test_tgi_load_reads_info_once(engine: FakeEngine, transport: EngineTransport) -> None:
    engine.replies["/metrics"] = Reply(chunks=[TGI_METRICS.encode()], content_type="text/plain")
    engine.replies["/info"] = Reply(chunks=[json.dumps({"model_id": "m", "max_concurrent_requests": 128}
                                                       ).encode()], content_type="application/json")
    adapter = TgiAdapter(engine.url, transport, PATIENT, max_batch_total_tokens=8192)
    for _ in range(2):
        load = await adapter.load()
        assert (load.running, load.waiting, load.kv_cache_usage, load.max_concurrent) == (4, 3, 0.25, 128)
    assert [s.path for s in engine.seen].count("/info") == 1


# --- both: failures before and after the first event, cancellation, connection reuse ------------

@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_engine(kind: str, transport: EngineTransport) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    adapter = make(kind, url, transport)
    with pytest.raises(UpstreamUnavailableError):
        await collect(adapter.stream(COMPLETION))
    assert not await adapter.health()
    with pytest.raises(UpstreamUnavailableError):
        await adapter.load()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "error"), [(500, UpstreamError), (503, UpstreamUnavailableError)])
async def test_server_errors_fail_over(engine: FakeEngine, transport: EngineTransport, kind: str,
                                       status: int, error: type[GatewayError]) -> None:
    engine.replies[completion_path(kind)] = Reply(status=status, content_type="text/plain", chunks=[b"oops"])
    with pytest.raises(error) as caught:
        await collect(make(kind, engine.url, transport).stream(COMPLETION))
    assert type(caught.value) is error and caught.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_no_first_event_in_time(engine: FakeEngine, transport: EngineTransport, kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(then="stall")
    with pytest.raises(UpstreamTimeoutError):
        await collect(make(kind, engine.url, transport, HASTY).stream(COMPLETION))
    await asyncio.wait_for(engine.client_left.wait(), 10)


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_after_first_event(engine: FakeEngine, transport: EngineTransport, kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a")], then="stall")
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamStreamError):
        async for batch in make(kind, engine.url, transport, HASTY).stream(COMPLETION):
            received += batch
    assert received == [Delta(text="a")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("chunks", "error"), [
    ([], UpstreamError), (["a"], UpstreamStreamError)])
async def test_dropped_connection(engine: FakeEngine, transport: EngineTransport, kind: str,
                                  chunks: list[str], error: type[GatewayError]) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, c) for c in chunks], then="drop")
    with pytest.raises(error) as caught:
        await collect(make(kind, engine.url, transport).stream(COMPLETION))
    assert type(caught.value) is error and caught.value.retryable


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("before", "error"), [(0, UpstreamError), (1, UpstreamStreamError)])
async def test_malformed_event(engine: FakeEngine, transport: EngineTransport, kind: str, before: int,
                               error: type[GatewayError]) -> None:
    chunks = [token(kind, "a")] * before + [b"data: {not json\n\n"]
    engine.replies[completion_path(kind)] = Reply(chunks=chunks)
    with pytest.raises(error) as caught:
        await collect(make(kind, engine.url, transport).stream(COMPLETION))
    assert type(caught.value) is error


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_ending_without_a_finish_is_an_error(engine: FakeEngine, transport: EngineTransport,
                                                          kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a")])
    with pytest.raises(UpstreamStreamError, match="ended the stream early"):
        await collect(make(kind, engine.url, transport).stream(COMPLETION))


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_stream_closes_the_upstream_connection(engine: FakeEngine,
                                                                transport: EngineTransport,
                                                                kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a")], then="stall")
    events = make(kind, engine.url, transport).stream(COMPLETION)
    assert await anext(events) == [Delta(text="a")]
    await events.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(engine.client_left.wait(), 10)


@pytest.mark.parametrize("kind", KINDS)
async def test_events_that_arrive_together_come_in_one_batch(engine: FakeEngine, transport: EngineTransport,
                                                             kind: str) -> None:
    """The unit a stream travels in is what one read of the answer completed: two events written at once
    come as one batch, the next write as another, and the usage last, once the stream has ended."""
    engine.replies[completion_path(kind)] = Reply(
        chunks=[token(kind, "a") + token(kind, "b"), b"".join(tail(kind))], gap_s=0.05)
    batches = [batch async for batch in make(kind, engine.url, transport).stream(COMPLETION)]
    assert batches == [[Delta(text="a"), Delta(text="b")], [Delta(text="b", finish_reason="length")],
                       [Usage(prompt_tokens=3, completion_tokens=2)]]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failure_read_with_events_relays_those_events_first(engine: FakeEngine,
                                                                   transport: EngineTransport,
                                                                   kind: str) -> None:
    """An engine error in the same read as the stream's first events: those events are relayed (the
    request is then committed) and the error is a mid-stream one, as when they came one by one."""
    garbage = b"data: {not json\n\n"
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a") + token(kind, "b") + garbage])
    received: list[EventBatch] = []
    with pytest.raises(UpstreamStreamError, match="unparsable"):
        async for batch in make(kind, engine.url, transport).stream(COMPLETION):
            received.append(batch)
    assert received == [[Delta(text="a"), Delta(text="b")]]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_finished_stream_returns_its_connection_to_the_pool(
        engine: FakeEngine, transport: EngineTransport, kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a"), *tail(kind)])
    adapter = make(kind, engine.url, transport)
    for _ in range(2):
        events = await collect(adapter.stream(COMPLETION))
        assert [e.text for e in events if isinstance(e, Delta)] == ["a", "b"]
        assert events[-1] == Usage(prompt_tokens=3, completion_tokens=2)
    assert engine.seen[0].peer == engine.seen[1].peer


@pytest.mark.parametrize("kind", KINDS)
async def test_a_body_left_open_after_the_end_marker_still_completes(
        engine: FakeEngine, transport: EngineTransport, kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a"), *tail(kind)], then="stall")
    events = await collect(make(kind, engine.url, transport, HASTY).stream(COMPLETION))
    assert events[-1] == Usage(prompt_tokens=3, completion_tokens=2)
    await asyncio.wait_for(engine.client_left.wait(), 10)


@pytest.mark.parametrize("kind", KINDS)
async def test_time_the_consumer_holds_an_event_is_not_engine_idle_time(
        engine: FakeEngine, transport: EngineTransport, kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a"), *tail(kind)])
    events: list[StreamEvent] = []
    async for batch in make(kind, engine.url, transport, HASTY).stream(COMPLETION):
        events += batch
        await asyncio.sleep(0.5)  # longer than HASTY's idle_s
    assert events[-1] == Usage(prompt_tokens=3, completion_tokens=2)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_a_read_is_not_a_timeout(engine: FakeEngine, transport: EngineTransport,
                                                  kind: str) -> None:
    engine.replies[completion_path(kind)] = Reply(chunks=[token(kind, "a")], then="stall")

    async def consume() -> list[StreamEvent]:
        return await collect(make(kind, engine.url, transport, PATIENT).stream(COMPLETION))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(engine.client_left.wait(), 10)
