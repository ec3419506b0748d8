"""backends/vllm.py's ``VllmAdapter`` against the real vLLM server: streamed events, usage, prefix-cache
hits, error mapping, health, metrics, and aborting the engine's request when the iterator is closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from backends.engine_http import AiohttpTransport, EngineTransport
from backends.vllm import VllmAdapter
from gateway.composition import build_transport
from gateway.errors import InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.types import Delta, GenerateRequest, StreamEvent, Usage
from tests.support.vllm_server import VllmServer, free_port

pytestmark = pytest.mark.vllm

MODEL = "tiny-llama"
FIXED_LENGTH = {"ignore_eos": True}


@pytest.fixture(params=["aiohttp", "http1"])
async def adapter(vllm_server: VllmServer, request: pytest.FixtureRequest) -> AsyncIterator[VllmAdapter]:
    """Over both HTTP clients the gateway can use."""
    transport: EngineTransport = build_transport(request.param)
    vllm = VllmAdapter(vllm_server.base_url, transport)
    yield vllm
    await vllm.aclose()
    await transport.aclose()


def chat(content: str, **fields: Any) -> GenerateRequest:
    return GenerateRequest(kind="chat", model=fields.pop("model", MODEL),
                           messages=[{"role": "user", "content": content}], extra=dict(FIXED_LENGTH),
                           **fields)


def completion(prompt: str, **fields: Any) -> GenerateRequest:
    return GenerateRequest(kind="completion", model=fields.pop("model", MODEL), prompt=prompt,
                           extra=dict(FIXED_LENGTH), **fields)


async def collect(adapter: VllmAdapter, request: GenerateRequest) -> tuple[list[Delta], list[Usage]]:
    events: list[StreamEvent] = [event async for batch in adapter.stream(request) for event in batch]
    deltas = [event for event in events if isinstance(event, Delta)]
    usages = [event for event in events if isinstance(event, Usage)]
    assert len(deltas) + len(usages) == len(events)
    assert usages and events[-1] is usages[-1], "usage is the last event"
    return deltas, usages


def token_count(server: VllmServer, body: dict[str, Any]) -> int:
    response = httpx.post(f"{server.base_url}/tokenize", json={"model": MODEL, **body}, timeout=10)
    count: int = response.json()["count"]
    return count


def unique_text(words: int) -> str:
    """A prompt no other test sent (so no prefix-cache hit leaks in), about ``words`` tokens or more."""
    return f"{uuid.uuid4().hex} " + " ".join(f"word{i % 97}" for i in range(words))


@pytest.mark.parametrize("stream", [True, False])
async def test_chat_events_and_usage(adapter: VllmAdapter, vllm_server: VllmServer, stream: bool) -> None:
    content = unique_text(20)
    deltas, usages = await collect(adapter, chat(content, max_tokens=7, stream=stream))
    # Streamed upstream whatever the client asked: the role-only first chunk comes through one to one.
    assert (deltas[0].role, deltas[0].text) == ("assistant", "")
    assert [d.finish_reason for d in deltas][-1] == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert 1 <= len(deltas) - 1 <= 7  # one chunk per token, fewer when partial UTF-8 is held back
    prompt_tokens = token_count(vllm_server, {"messages": [{"role": "user", "content": content}]})
    assert usages == [Usage(prompt_tokens=prompt_tokens, completion_tokens=7, cached_tokens=0)]


@pytest.mark.parametrize("stream", [True, False])
async def test_completion_events_and_usage(adapter: VllmAdapter, vllm_server: VllmServer,
                                           stream: bool) -> None:
    prompt = unique_text(30)
    deltas, usages = await collect(adapter, completion(prompt, max_tokens=9, stream=stream))
    assert all(d.role is None for d in deltas)
    assert deltas[-1].finish_reason == "length"
    assert "".join(d.text for d in deltas)
    assert usages == [Usage(prompt_tokens=token_count(vllm_server, {"prompt": prompt}), completion_tokens=9,
                            cached_tokens=0)]


async def test_usage_comes_even_when_the_client_did_not_ask(adapter: VllmAdapter) -> None:
    _, usages = await collect(adapter, completion(unique_text(5), max_tokens=3, stream=True,
                                                  include_usage=False))
    assert usages[0].completion_tokens == 3


async def test_stop_and_temperature_zero_are_passed_through(adapter: VllmAdapter) -> None:
    first, _ = await collect(adapter, completion("the cache", max_tokens=6, temperature=0.0))
    again, _ = await collect(adapter, completion("the cache", max_tokens=6, temperature=0.0))
    text = "".join(d.text for d in first)
    assert text == "".join(d.text for d in again)
    stop_at = text.strip()[:2]
    stopped, usages = await collect(adapter, GenerateRequest(
        kind="completion", model=MODEL, prompt="the cache", max_tokens=6, temperature=0.0, stop=[stop_at]))
    assert stopped[-1].finish_reason == "stop"
    assert stop_at not in "".join(d.text for d in stopped)
    assert usages[0].completion_tokens < 6


async def test_repeated_long_prompt_hits_the_prefix_cache(adapter: VllmAdapter) -> None:
    prompt = unique_text(300)
    _, cold = await collect(adapter, completion(prompt, max_tokens=2))
    _, warm = await collect(adapter, completion(prompt, max_tokens=2))
    assert cold[0].prompt_tokens > 256
    assert cold[0].cached_tokens == 0
    cached = warm[0].cached_tokens
    assert cached is not None and cached > 0
    assert cached % 128 == 0 and cached <= warm[0].prompt_tokens  # whole 128-token CPU KV blocks only


async def test_repeated_chat_history_hits_the_prefix_cache(adapter: VllmAdapter) -> None:
    history = unique_text(200)
    _, cold = await collect(adapter, chat(history, max_tokens=2))
    follow_up = GenerateRequest(kind="chat", model=MODEL, max_tokens=2, extra=dict(FIXED_LENGTH), messages=[
        {"role": "user", "content": history}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and then?"}])
    _, warm = await collect(adapter, follow_up)
    assert cold[0].cached_tokens == 0
    assert (warm[0].cached_tokens or 0) >= 128


@pytest.mark.parametrize("max_tokens", [-1, 0, 5000])
async def test_bad_max_tokens_is_an_invalid_request_naming_the_param(adapter: VllmAdapter,
                                                                     max_tokens: int) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        await collect(adapter, completion("hello", max_tokens=max_tokens))
    error = raised.value
    assert (error.http_status, error.param, error.retryable) == (400, "max_tokens", False)
    assert "max_tokens" in error.message


async def test_prompt_over_the_context_is_an_invalid_request(adapter: VllmAdapter) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        await collect(adapter, completion("hello world " * 1500, max_tokens=4))
    assert (raised.value.http_status, raised.value.param) == (400, "input_tokens")


async def test_bad_temperature_is_an_invalid_request(adapter: VllmAdapter) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        await collect(adapter, chat("hello", max_tokens=2, temperature=-1.0))
    assert raised.value.param == "temperature"


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_unknown_model_is_not_found(adapter: VllmAdapter, kind: str) -> None:
    request = chat("hi", model="no-such-model") if kind == "chat" else completion("hi", model="no-such-model")
    with pytest.raises(NotFoundError) as raised:
        await collect(adapter, request)
    assert (raised.value.http_status, raised.value.param, raised.value.retryable) == (404, "model", False)
    assert "no-such-model" in raised.value.message


async def test_health_and_load(adapter: VllmAdapter) -> None:
    assert await adapter.health()
    before = await adapter.load()
    assert (before.block_size, before.num_blocks) == (128, 256)
    assert before.running == 0 and before.waiting == 0
    assert before.kv_cache_usage is not None and 0.0 <= before.kv_cache_usage <= 1.0
    await collect(adapter, completion(unique_text(150), max_tokens=2))
    after = await adapter.load()
    assert before.prefix_cache_queries is not None and after.prefix_cache_queries is not None
    assert after.prefix_cache_queries > before.prefix_cache_queries
    assert after.prefix_cache_hits is not None and after.preemptions is not None


async def test_closing_the_stream_aborts_the_engine_request(adapter: VllmAdapter,
                                                            vllm_server: VllmServer) -> None:
    # vLLM 0.32 does not count aborts in request_success_total: the proof is that the request stops
    # running long before its 1,500 tokens and never finishes with "length".
    # The counters are read over one kept-alive connection: on this vLLM a new connection that arrives
    # in the same instant as a client's disconnect is answered only once the abandoned request has
    # generated all its tokens, and the disconnect is missed (reproduced with plain aiohttp + httpx).
    async with httpx.AsyncClient(base_url=vllm_server.base_url, timeout=5) as metrics:
        before = await settled_counters(adapter, metrics)
        events = adapter.stream(completion(unique_text(5), max_tokens=1500))
        first = await anext(events)
        assert all(isinstance(event, Delta) for event in first)
        await events.aclose()  # type: ignore[attr-defined]
        after = await settled_counters(adapter, metrics)
    assert after["length"] == before["length"]
    assert 0 < after["generated"] - before["generated"] < 1500


async def settled_counters(adapter: VllmAdapter, metrics: httpx.AsyncClient) -> dict[str, float]:
    """Engine counters once nothing runs and they stopped moving (vLLM publishes them a bit late)."""
    previous: dict[str, float] = {}
    for _ in range(60):
        counters = engine_counters((await metrics.get("/metrics")).text)
        if counters == previous and (await adapter.load()).running == 0:
            return counters
        previous = counters
        await asyncio.sleep(0.5)
    raise AssertionError(f"vLLM counters never settled: {previous}")


def engine_counters(text: str) -> dict[str, float]:
    counters = {}
    for line in text.splitlines():
        if line.startswith("vllm:generation_tokens_total{"):
            counters["generated"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:request_success_total{") and 'finished_reason="length"' in line:
            counters["length"] = float(line.rsplit(" ", 1)[1])
    return counters


async def test_a_dead_server_is_unhealthy_and_fails_over() -> None:
    async with aiohttp.ClientSession() as session:
        dead = VllmAdapter(f"http://127.0.0.1:{free_port()}", AiohttpTransport(session))
        assert not await dead.health()
        with pytest.raises(UpstreamUnavailableError) as raised:
            await collect(dead, completion("hello", max_tokens=2))
        assert raised.value.retryable
