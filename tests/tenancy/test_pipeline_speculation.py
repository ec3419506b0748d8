"""The pipeline's speculative path with a real Admission on the shared Redis: the engine request runs
while the admission is a future of Redis' reply. A refusal stops it and answers 429 (also when the
engine failed first), a client leaving before the decision gets its reservation refunded, an engine
failure with the request admitted releases the lease, and an admitted request is settled with the
engine's usage.

Engines are not needed to show this: ``StandInForwarder`` (a stand-in, labelled as such) takes the
Forwarder's place and holds each request until the test releases it or fails it, so that the decision's
timing relative to the engine's is chosen, not raced. Two Admissions on one prefix play two gateway
replicas sharing a bucket, as in tests/tenancy_e2e/test_tenancy_e2e_speculation.py over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import RateLimitError, UpstreamError
from gateway.forwarder import Completion, Forwarder
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.registry import Backend, Registry
from gateway.settings import BackendConfig
from gateway.tenancy import Admission, Principal
from gateway.types import GenerateRequest, Usage

MODEL = "m"
PRINCIPAL = Principal("default")


class StandInForwarder:
    """Stands in for ``Forwarder.complete``: records each call's task and max_tokens, then waits for
    ``release`` (or raises ``fail_with`` at once), counting cancellations."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail_with: Exception | None = None
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.max_tokens: list[int | None] = []
        self.cancelled = 0

    async def complete(self, request: GenerateRequest, *, routing_key: str | None = None) -> Completion:
        self.tasks.append(asyncio.current_task())
        self.max_tokens.append(request.max_tokens)
        self.entered.set()
        if self.fail_with is not None:
            raise self.fail_with
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Completion("b1", "some text", "stop", Usage(prompt_tokens=3, completion_tokens=7))


def pipeline(admission: Admission, forwarder: StandInForwarder) -> Pipeline:
    config = BackendConfig(name="b1", kind="sim", models=[MODEL])
    registry = Registry([Backend(config=config, adapter=cast(Any, None), url="http://127.0.0.1:1")])
    return Pipeline(registry, cast(Forwarder, forwarder), admission, GatewayMetrics(CollectorRegistry()))


def request() -> GenerateRequest:
    return GenerateRequest(kind="completion", model=MODEL, prompt="0123456789ab", max_tokens=10)


def replicas(make_admission: Any, **limits: Any) -> tuple[Admission, Admission]:
    tenants = [{"name": "default", "limits": limits}]
    return make_admission("redis", tenants=tenants), make_admission("redis", tenants=tenants)


async def serve(target: Pipeline) -> tuple[Any, Completion]:
    """One request served, then recorded as the data plane records it once the answer is sent."""
    lease, completion, record = await target.admit_and_complete(PRINCIPAL, request(), {}, "openai_completion",
                                                                time.perf_counter())
    await record()
    return lease, completion


async def served_once(make_admission: Any) -> tuple[Admission, StandInForwarder, Pipeline]:
    """One replica with room, its pipeline over a stand-in forwarder, and a first request served (the
    store's first answer: nothing is speculated before it)."""
    one, _ = replicas(make_admission, tokens_per_minute=10_000)
    forwarder = StandInForwarder()
    forwarder.release.set()
    target = pipeline(one, forwarder)
    await serve(target)
    return one, forwarder, target


async def test_an_admitted_speculative_request_is_answered_and_settled(make_admission: Any) -> None:
    registry = CollectorRegistry()
    one = make_admission("redis", registry=registry,
                         tenants=[{"name": "default", "limits": {"tokens_per_minute": 10_000}}])
    forwarder = StandInForwarder()
    forwarder.release.set()
    target = pipeline(one, forwarder)
    await serve(target)  # the store's first answer: no speculation before it
    lease, completion = await serve(target)
    assert registry.get_sample_value("gateway_ratelimit_speculative_admissions_total",
                                     {"outcome": "admitted"}) == 1
    assert completion.text == "some text" and lease.settled
    usage = await one.usage("default")
    assert usage.charged_tokens == 2 * (3 + 7) and usage.open_leases == 0


@pytest.mark.parametrize("engine", ["still generating", "failed first"])
async def test_a_refusal_stops_the_engine_request_and_answers_429(make_admission: Any, engine: str) -> None:
    one, other = replicas(make_admission, requests_per_minute=2)
    forwarder = StandInForwarder()
    forwarder.release.set()
    target = pipeline(one, forwarder)
    await serve(target)  # replica one saw one request left
    await (await other.admit(PRINCIPAL, MODEL, 1, 1)).settle(1, 1)  # the other replica takes it
    forwarder.release.clear()
    if engine == "failed first":
        forwarder.fail_with = UpstreamError("engine refused the connection")
    started = time.perf_counter()
    with pytest.raises(RateLimitError):
        await asyncio.wait_for(serve(target), 5)
    assert time.perf_counter() - started < 2, "refused as soon as Redis answered, not when the engine ended"
    assert len(forwarder.tasks) == 2, "the second request was speculative: its engine request started"
    if engine == "still generating":
        assert forwarder.cancelled == 1, "the refusal cancelled the engine request"


async def test_a_client_leaving_before_the_decision_gets_its_tokens_back(make_admission: Any) -> None:
    one, forwarder, target = await served_once(make_admission)
    forwarder.release.clear()
    forwarder.entered.clear()
    task = asyncio.ensure_future(serve(target))
    await forwarder.entered.wait()
    task.cancel()  # the engine request is running and Redis has not answered yet
    with pytest.raises(asyncio.CancelledError):
        await task
    assert forwarder.cancelled == 1
    await asyncio.sleep(0.2)  # Redis' answer arrives for nobody: what it admitted is refunded
    usage = await one.usage("default")
    assert usage.charged_tokens == 3 + 7 and usage.open_leases == 0


async def test_an_engine_failure_with_the_request_admitted_releases_its_lease(make_admission: Any) -> None:
    one, forwarder, target = await served_once(make_admission)
    forwarder.fail_with = UpstreamError("engine refused the connection")
    with pytest.raises(UpstreamError):
        await serve(target)
    assert len(forwarder.tasks) == 2
    usage = await one.usage("default")
    assert usage.charged_tokens == 3 + 7 and usage.open_leases == 0
