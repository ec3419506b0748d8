"""The adapter contract under engine faults, over the sim in both dialects (``x-sim-fault`` per request,
a killed process): which gateway error comes out before and after the first event, and that a resumed
generation (prompt + streamed text, or a continued assistant message) carries on exactly where the
broken one stopped, which is what the gateway's mid-stream failover relies on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from backends.engine_http import AdapterTimeouts, EngineTransport
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import Delta, GenerateRequest, StreamEvent

if TYPE_CHECKING:
    from conftest import EngineProcess, Target

PATIENT = AdapterTimeouts(connect_s=5, first_token_s=60, idle_s=60, probe_s=5)
HASTY = AdapterTimeouts(connect_s=5, first_token_s=0.5, idle_s=0.5, probe_s=5)
PROMPT = "Resumable streams need a deterministic engine, and this one"
MESSAGES = [{"role": "user", "content": "Keep talking about caches."}]
KINDS = ["chat", "completion"]


@pytest.fixture
def sim_target(target: Target) -> Target:
    if not target.sim:
        pytest.skip(f"{target.name} has no fault injection")
    return target


def generate_request(target: Target, kind: str, **overrides: Any) -> GenerateRequest:
    fields: dict[str, Any] = {"kind": kind, "model": target.model, "max_tokens": 12, "temperature": 0.0}
    fields.update({"messages": MESSAGES} if kind == "chat" else {"prompt": PROMPT})
    return GenerateRequest(**{**fields, **overrides})


async def consume(target: Target, transport: EngineTransport, request: GenerateRequest,
                  timeouts: AdapterTimeouts = PATIENT) -> tuple[list[StreamEvent], GatewayError | None]:
    events: list[StreamEvent] = []
    try:
        async for batch in target.make(transport, timeouts).stream(request):
            events += batch
    except GatewayError as exc:
        return events, exc
    return events, None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "error", "events_first"), [
    ("status=500", UpstreamError, False),
    ("status=503", UpstreamUnavailableError, False),
    ("status=429", UpstreamUnavailableError, False),
    ("drop-after=3", UpstreamStreamError, True),
    ("error-after=3", UpstreamStreamError, True),
    ("drop-after=0", UpstreamError, False),
])
async def test_injected_failures_map_to_gateway_errors(sim_target: Target, transport: EngineTransport,
                                                       kind: str, fault: str, error: type[GatewayError],
                                                       events_first: bool) -> None:
    request = generate_request(sim_target, kind, fault=fault)
    events, raised = await consume(sim_target, transport, request)
    if kind == "chat" and fault == "drop-after=0" and sim_target.dialect == "vllm":
        error = UpstreamStreamError  # vLLM sends its role chunk before the first token
    assert type(raised) is error and raised.retryable
    assert bool(events) is (events_first or error is UpstreamStreamError)


async def test_no_first_token_in_time_is_a_timeout(sim_target: Target,
                                                   transport: EngineTransport) -> None:
    request = generate_request(sim_target, "completion", fault="stall-before=5")
    events, raised = await consume(sim_target, transport, request, HASTY)
    assert events == [] and type(raised) is UpstreamTimeoutError


@pytest.mark.parametrize("kind", KINDS)
async def test_stall_mid_stream_is_a_stream_error(sim_target: Target, transport: EngineTransport,
                                                  kind: str) -> None:
    request = generate_request(sim_target, kind, fault="stall-after=2:5")
    events, raised = await consume(sim_target, transport, request, HASTY)
    assert len(events) >= 2 and type(raised) is UpstreamStreamError


async def test_killed_engine_is_unavailable(sim_target: Target, transport: EngineTransport,
                                            sim_factory: Callable[..., EngineProcess]) -> None:
    engine = sim_factory(sim_target.dialect)
    adapter = type(sim_target.make(transport, PATIENT))(engine.url, transport, PATIENT)
    assert await adapter.health()
    engine.kill()
    with pytest.raises(UpstreamUnavailableError):
        _ = [batch async for batch in adapter.stream(generate_request(sim_target, "completion"))]
    assert not await adapter.health()
    with pytest.raises(UpstreamUnavailableError):
        await adapter.load()


@pytest.mark.parametrize("kind", KINDS)
async def test_resumed_generation_continues_exactly(sim_target: Target, transport: EngineTransport,
                                                    kind: str) -> None:
    full, raised = await consume(sim_target, transport, generate_request(sim_target, kind))
    assert raised is None
    full_text = "".join(e.text for e in full if isinstance(e, Delta))
    broken, raised = await consume(sim_target, transport,
                                   generate_request(sim_target, kind, fault="drop-after=5"))
    assert type(raised) is UpstreamStreamError
    partial = "".join(e.text for e in broken if isinstance(e, Delta))
    sent = sum(1 for e in broken if isinstance(e, Delta) and e.text)
    assert partial and full_text.startswith(partial)
    if kind == "chat":
        resume = generate_request(sim_target, kind, max_tokens=12 - sent, continue_final_message=True,
                                  messages=[*MESSAGES, {"role": "assistant", "content": partial}])
    else:
        resume = generate_request(sim_target, kind, max_tokens=12 - sent, prompt=PROMPT + partial)
    rest, raised = await consume(sim_target, transport, resume)
    assert raised is None
    assert partial + "".join(e.text for e in rest if isinstance(e, Delta)) == full_text
