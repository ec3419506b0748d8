"""The adapter contract for non-stream requests (``EngineAdapter.complete``), over every target of
conftest.py: the whole answer is the engine's own non-stream answer and the same text the stream gives,
with the usage and finish reason; errors map as for streams and every failure, a mid-generation one
included, is a fail-over error (nothing has reached the client); no whole answer within ``whole_s`` is a
timeout; cancelling the call aborts the engine's request. Faults (``x-sim-fault``) on the sims only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from backends.engine_http import AdapterTimeouts, EngineTransport
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from tests.contract.conftest import unreachable_url
from tests.contract.test_adapter_contract import (
    KINDS,
    MAX_TOKENS,
    PATIENT,
    generate_request,
    non_stream_text,
    run,
)

if TYPE_CHECKING:
    from conftest import EngineProcess, Target

HASTY = AdapterTimeouts(connect_s=5, first_token_s=60, idle_s=60, probe_s=5, whole_s=0.5)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_whole_answer_is_the_engines_and_the_streams(target: Target, transport: EngineTransport,
                                                              kind: str) -> None:
    request = generate_request(target, kind)
    whole = await target.make(transport, PATIENT).complete(request)
    assert whole.text == await non_stream_text(target, kind)
    assert whole.text == (await run(target, transport, request)).text
    assert whole.finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == MAX_TOKENS
    assert whole.usage.prompt_tokens > 0


@pytest.mark.parametrize("kind", KINDS)
async def test_invalid_max_tokens_names_the_param(target: Target, transport: EngineTransport,
                                                  kind: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await target.make(transport, PATIENT).complete(generate_request(target, kind, max_tokens=0))
    assert caught.value.param == "max_tokens" and not caught.value.retryable


async def test_unreachable_engine_is_unavailable(target: Target, transport: EngineTransport) -> None:
    adapter = type(target.make(transport, PATIENT))(unreachable_url(), transport, PATIENT)
    with pytest.raises(UpstreamUnavailableError):
        await adapter.complete(generate_request(target, "completion"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "errors"), [
    ("status=500", (UpstreamError,)),
    ("status=503", (UpstreamUnavailableError,)),
    ("status=429", (UpstreamUnavailableError,)),
    # Mid-generation: a broken or failed answer (vLLM: whole; a connection closed before any answer
    # reads as an unavailable engine) or a broken stream (TGI: gathered).
    ("drop-after=3", (UpstreamError, UpstreamStreamError, UpstreamUnavailableError)),
    ("error-after=3", (UpstreamError, UpstreamStreamError)),
    ("drop-after=0", (UpstreamError, UpstreamStreamError, UpstreamUnavailableError)),
])
async def test_every_failure_is_a_fail_over_error(target: Target, transport: EngineTransport, kind: str,
                                                  fault: str, errors: tuple[type[GatewayError], ...]) -> None:
    if not target.sim:
        pytest.skip(f"{target.name} has no fault injection")
    with pytest.raises(GatewayError) as caught:
        await target.make(transport, PATIENT).complete(generate_request(target, kind, fault=fault))
    assert type(caught.value) in errors and caught.value.retryable


async def test_no_whole_answer_in_time_is_a_timeout(target: Target, transport: EngineTransport) -> None:
    if not target.sim:
        pytest.skip(f"{target.name} has no fault injection")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await target.make(transport, HASTY).complete(generate_request(target, "completion",
                                                                      fault="stall-before=5"))
    assert loop.time() - started < 3.0


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_aborts_the_engine_request(target: Target, transport: EngineTransport, kind: str,
                                                    sim_factory: Callable[..., EngineProcess]) -> None:
    if not target.sim:
        pytest.skip("the abort on real vLLM is proven for streams by tests/vllm/test_vllm_adapter.py")
    engine = sim_factory(target.dialect, "--step-overhead", "0.2")
    adapter = type(target.make(transport, PATIENT))(engine.url, transport, PATIENT)
    call = asyncio.ensure_future(adapter.complete(generate_request(target, kind, max_tokens=1500)))
    for _ in range(100):
        if (await adapter.load()).running == 1:
            break
        await asyncio.sleep(0.05)
    assert (await adapter.load()).running == 1 and not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(300):
        if (await adapter.load()).running == 0:
            break
        await asyncio.sleep(0.05)
    assert (await adapter.load()).running == 0
