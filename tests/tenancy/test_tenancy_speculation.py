"""Speculative admission: the budget that says when an engine request may start before the limit store
has decided (gateway/tenancy/speculation.py), and the Admission's conditions for it (Redis store,
per-minute limits only, no max_tokens clamping, room left by the store's last answer)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import RateLimitError
from gateway.tenancy import Principal
from gateway.tenancy.speculation import SpeculationBudget

SCOPE = ("acme", "", "m")


def test_nothing_is_speculated_before_the_store_has_answered_once() -> None:
    budget = SpeculationBudget()
    assert not budget.take(SCOPE, 10)
    budget.decided(SCOPE, 10, speculative=False, admitted=True, requests_left=2, tokens_left=math.inf)
    assert budget.take(SCOPE, 10)


def test_pending_speculations_use_up_the_room_the_last_answer_reported() -> None:
    budget = SpeculationBudget()
    budget.decided(SCOPE, 5, speculative=False, admitted=True, requests_left=2, tokens_left=100)
    assert budget.take(SCOPE, 40) and budget.take(SCOPE, 40)
    assert not budget.take(SCOPE, 1)  # two requests pending: none left
    # The first one's answer reports one request left, but one speculation is still pending.
    budget.decided(SCOPE, 40, speculative=True, admitted=True, requests_left=1, tokens_left=60)
    assert not budget.take(SCOPE, 1)
    budget.decided(SCOPE, 40, speculative=True, admitted=True, requests_left=5, tokens_left=60)
    assert not budget.take(SCOPE, 61)  # tokens: a request must fit in what is left
    assert budget.take(SCOPE, 60)


def test_a_refusal_stops_speculation_until_the_store_admits_again() -> None:
    budget = SpeculationBudget()
    budget.decided(SCOPE, 1, speculative=False, admitted=True, requests_left=10, tokens_left=math.inf)
    assert budget.take(SCOPE, 1)
    budget.decided(SCOPE, 1, speculative=True, admitted=False, requests_left=0, tokens_left=math.inf)
    assert not budget.take(SCOPE, 1) and len(budget) == 0
    budget.decided(SCOPE, 1, speculative=False, admitted=True, requests_left=3, tokens_left=math.inf)
    assert budget.take(SCOPE, 1)
    budget.forget(SCOPE)
    assert not budget.take(SCOPE, 1)


def test_scopes_are_separate_and_memory_is_bounded() -> None:
    budget = SpeculationBudget(max_scopes=3)
    for index in range(10):
        budget.decided(("t", str(index), "m"), 1, speculative=False, admitted=True, requests_left=5,
                       tokens_left=math.inf)
    assert len(budget) == 3
    assert not budget.take(("t", "0", "m"), 1)  # the least recently used were dropped
    assert budget.take(("t", "9", "m"), 1)
    with pytest.raises(ValueError):
        SpeculationBudget(max_scopes=0)


def tenant(name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, **options}


async def test_admission_speculates_only_under_per_minute_limits_on_redis(make_admission: Any) -> None:
    tenants = [tenant("plain", limits={"requests_per_minute": 1000, "tokens_per_minute": 100_000}),
               tenant("conc", limits={"requests_per_minute": 1000, "concurrent_requests": 5}),
               tenant("daily", limits={"daily_tokens": 100_000}),
               tenant("clamp", limits={"tokens_per_minute": 100_000}, clamp_max_tokens=True),
               tenant("free")]
    for store in ("redis", "memory"):
        admission = make_admission(store, tenants=tenants, default_tenant="plain")
        for name in ("plain", "conc", "daily", "clamp", "free"):
            who = Principal(name)
            assert not admission.speculate(who, "m", 10, 10)  # the store has not answered yet
            lease = await admission.admit(who, "m", 10, 10)
            await lease.settle(10, 10)
            expected = store == "redis" and name == "plain"
            assert admission.speculate(who, "m", 10, 10) is expected, (store, name)
            if expected:
                assert not admission.speculate(who, "other-model", 10, 10)  # scopes include the model
                lease = await admission.admit(who, "m", 10, 10, speculative=True)
                await lease.settle(10, 10)
    off = make_admission("redis", tenants=tenants, default_tenant="plain", speculative_admission=False)
    lease = await off.admit(Principal("plain"), "m", 10, 10)
    await lease.settle(10, 10)
    assert not off.speculate(Principal("plain"), "m", 10, 10)


async def test_a_speculative_refusal_is_counted_and_ends_speculation(make_admission: Any) -> None:
    registry = CollectorRegistry()
    admission = make_admission("redis", registry=registry, default_tenant="tight",
                               tenants=[tenant("tight", limits={"requests_per_minute": 2})])
    other = make_admission("redis", default_tenant="tight",  # another replica on the same buckets
                           tenants=[tenant("tight", limits={"requests_per_minute": 2})])
    who = Principal("tight")
    await (await admission.admit(who, "m", 1, 1)).settle(1, 1)
    assert admission.speculate(who, "m", 1, 1)  # one request left, as far as this replica knows
    await (await other.admit(who, "m", 1, 1)).settle(1, 1)  # the other replica takes it
    with pytest.raises(RateLimitError):
        await admission.admit(who, "m", 1, 1, speculative=True)
    assert registry.get_sample_value("gateway_ratelimit_speculative_admissions_total",
                                     {"outcome": "limited"}) == 1
    assert not admission.speculate(who, "m", 1, 1)
