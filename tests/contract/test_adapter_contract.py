"""The adapter contract: the same scenarios over every target of conftest.py (vllm adapter over the sim
in the vllm dialect, tgi adapter over the sim in the tgi dialect, and the real vLLM server when the
``vllm`` marker is selected). What the gateway relies on: the stream is the engine's answer, usage
comes once, finish reasons and stop strings behave like OpenAI's, errors map to the right gateway
error, closing the stream aborts the engine's request, and the engine's numbers come back through
``load()``. Engine-side faults (sim only) are in test_adapter_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from backends.engine_http import AdapterTimeouts, EngineTransport
from gateway.errors import InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.types import Delta, GenerateRequest, StreamEvent, Usage
from tests.contract.conftest import unreachable_url

if TYPE_CHECKING:
    from conftest import EngineProcess, Target

PATIENT = AdapterTimeouts(connect_s=5, first_token_s=60, idle_s=60, probe_s=5)
PROMPT = "The gateway sends a request to the engine, and the engine answers with"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me about the cache."}]
MAX_TOKENS = 6
KINDS = ["chat", "completion"]


@dataclass
class Result:
    deltas: list[Delta]
    usages: list[Usage]

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)


def generate_request(target: Target, kind: str, **overrides: Any) -> GenerateRequest:
    fields: dict[str, Any] = {"kind": kind, "model": target.model, "max_tokens": MAX_TOKENS,
                              "temperature": 0.0, "extra": {"ignore_eos": True}}
    if kind == "chat":
        fields["messages"] = MESSAGES
    else:
        fields["prompt"] = PROMPT
    return GenerateRequest(**{**fields, **overrides})


async def run(target: Target, transport: EngineTransport, request: GenerateRequest) -> Result:
    adapter = target.make(transport, PATIENT)
    events: list[StreamEvent] = [e async for batch in adapter.stream(request) for e in batch]
    return Result([e for e in events if isinstance(e, Delta)], [e for e in events if isinstance(e, Usage)])


async def non_stream_text(target: Target, kind: str) -> str:
    """The engine's own non-stream answer to the same greedy request, asked directly."""
    async with aiohttp.ClientSession() as session:
        return await _non_stream_text(target, session, kind)


async def _non_stream_text(target: Target, session: aiohttp.ClientSession, kind: str) -> str:
    if target.dialect == "tgi" and kind == "completion":
        body: dict[str, Any] = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_TOKENS,
                                                                 "do_sample": False}}
        async with session.post(target.url + "/generate", json=body) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["generated_text"])
    body = {"model": target.model, "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": False}
    if target.dialect == "vllm":
        body["ignore_eos"] = True
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    body.update({"messages": MESSAGES} if kind == "chat" else {"prompt": PROMPT})
    async with session.post(target.url + path, json=body) as response:
        assert response.status == 200, await response.text()
        choice = (await response.json())["choices"][0]
        return str(choice["message"]["content"] if kind == "chat" else choice["text"])


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_text_is_the_engines_non_stream_answer(target: Target, transport: EngineTransport,
                                                            kind: str) -> None:
    result = await run(target, transport, generate_request(target, kind))
    assert result.text and result.text == await non_stream_text(target, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_usage_comes_once_last_and_positive(target: Target, transport: EngineTransport,
                                                  kind: str) -> None:
    events = [e async for batch in target.make(transport, PATIENT).stream(generate_request(target, kind))
              for e in batch]
    usage = events[-1]
    assert isinstance(usage, Usage) and sum(isinstance(e, Usage) for e in events) == 1
    assert usage.prompt_tokens > 0 and usage.completion_tokens == MAX_TOKENS
    if usage.cached_tokens is not None:
        assert 0 <= usage.cached_tokens <= usage.prompt_tokens


@pytest.mark.parametrize("kind", KINDS)
async def test_length_finish_at_max_tokens_on_the_last_delta(target: Target, transport: EngineTransport,
                                                             kind: str) -> None:
    result = await run(target, transport, generate_request(target, kind))
    assert [d.finish_reason for d in result.deltas] == [None] * (len(result.deltas) - 1) + ["length"]


async def test_chat_stream_opens_with_the_assistant_role(target: Target,
                                                         transport: EngineTransport) -> None:
    result = await run(target, transport, generate_request(target, "chat"))
    assert result.deltas[0].role == "assistant"


@pytest.mark.parametrize("kind", KINDS)
async def test_stop_string_ends_the_text_before_it(target: Target, transport: EngineTransport,
                                                   kind: str) -> None:
    full = await run(target, transport, generate_request(target, kind, max_tokens=12))
    words = [d.text for d in full.deltas if d.text.strip()]
    assert len(words) >= 4, full.text
    stop = words[3].strip()
    stopped = await run(target, transport, generate_request(target, kind, max_tokens=12, stop=[stop]))
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.deltas[-1].finish_reason == "stop"
    assert stopped.usages and stopped.usages[0].completion_tokens <= 12


async def test_unknown_model_is_not_found(target: Target, transport: EngineTransport) -> None:
    if not target.checks_model:
        pytest.skip(f"{target.name} serves one model whatever the request names (as TGI does)")
    request = generate_request(target, "chat", model="no-such-model")
    with pytest.raises(NotFoundError) as caught:
        await run(target, transport, request)
    assert caught.value.param == "model" and not caught.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_invalid_max_tokens_names_the_param(target: Target, transport: EngineTransport,
                                                  kind: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await run(target, transport, generate_request(target, kind, max_tokens=0))
    assert caught.value.param == "max_tokens" and not caught.value.retryable


async def test_unreachable_engine_is_unavailable(target: Target, transport: EngineTransport) -> None:
    adapter = type(target.make(transport, PATIENT))(unreachable_url(), transport, PATIENT)
    with pytest.raises(UpstreamUnavailableError):
        await run_adapter(adapter, generate_request(target, "completion"))
    assert not await adapter.health()
    with pytest.raises(UpstreamUnavailableError):
        await adapter.load()


async def run_adapter(adapter: Any, request: GenerateRequest) -> list[StreamEvent]:
    return [e async for batch in adapter.stream(request) for e in batch]


async def test_health_and_load_report_numbers(target: Target, transport: EngineTransport) -> None:
    adapter = target.make(transport, PATIENT)
    await run(target, transport, generate_request(target, "completion"))
    assert await adapter.health()
    load = await adapter.load()
    assert load.running >= 0 and load.waiting >= 0
    if target.dialect == "vllm":
        assert load.block_size and load.num_blocks and load.block_size > 0 and load.num_blocks > 0
        assert load.kv_cache_usage is not None and 0.0 <= load.kv_cache_usage <= 1.0
        assert load.prefix_cache_queries is not None and load.prefix_cache_queries > 0
        assert load.prefix_cache_hits is not None and load.preemptions is not None
    else:
        assert load.max_concurrent is not None and load.max_concurrent > 0


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_stream_aborts_the_engine_request(
        target: Target, transport: EngineTransport, kind: str,
        sim_factory: Callable[..., EngineProcess]) -> None:
    if not target.sim:
        # On real vLLM 0.32 (2 cores) /metrics read "0 running" for 5 s mid-stream in 3 of 8 CI runs'
        # cases, and the request ends by itself in ~4 s anyway, so this gauge-based check proves
        # nothing there. tests/vllm/test_vllm_adapter.py proves the abort on real vLLM over both
        # transports by counting the tokens vLLM generated (far fewer than 1,500, none finished by length).
        pytest.skip("proven on real vLLM by tests/vllm/test_vllm_adapter.py (token counts)")
    adapter = target.make(transport, PATIENT)
    # A sim whose steps take long enough that the request surely still runs.
    engine = sim_factory(target.dialect, "--step-overhead", "0.2")
    adapter = type(adapter)(engine.url, transport, PATIENT)
    events = adapter.stream(generate_request(target, kind, max_tokens=1500))
    received = [event for _ in range(3) for event in await anext(events)]
    assert all(isinstance(e, Delta) for e in received)
    assert (await adapter.load()).running == 1
    await events.aclose()  # type: ignore[attr-defined]
    for _ in range(300):
        if (await adapter.load()).running == 0:
            break
        await asyncio.sleep(0.05)
    assert (await adapter.load()).running == 0
