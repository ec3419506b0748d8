"""Contract: every limiter scenario runs against both stores (memory, and the Redis store on the real
Redis at 127.0.0.1:6379) and must behave the same."""

from __future__ import annotations

import asyncio
import uuid

from gateway.tenancy.store import AdmitPlan, LimitStore, PlannedLimit
from policies.ratelimit import Demand, Limit, LimitKind

MINUTE = 60_000_000
SECOND = 1_000_000
DAY = 86_400_000_000


def plan(prefix: str, *limits: tuple[str, Limit], prompt: int = 0, completion: int = 0, clamp: bool = False,
         ttl_us: int = 30 * SECOND) -> AdmitPlan:
    names = {LimitKind.REQUESTS: "requests", LimitKind.TOKENS: "tokens", LimitKind.QUOTA: "daily_tokens",
             LimitKind.CONCURRENCY: "concurrency"}
    planned = tuple(PlannedLimit(prefix + key, limit, names[limit.kind], "tenant") for key, limit in limits)
    demand = Demand(prompt, completion, clamp, 16)
    return AdmitPlan(uuid.uuid4().hex, planned, prefix + "ledger", demand, ttl_us)


async def test_requests_limit_admits_capacity_then_refuses_with_retry(store: LimitStore, prefix: str) -> None:
    rpm = ("rpm", Limit(LimitKind.REQUESTS, 3, MINUTE))
    remaining = []
    for _ in range(3):
        result = await store.admit(plan(prefix, rpm))
        assert result.decision.admitted and result.requests is not None
        remaining.append(result.requests.remaining)
    assert remaining == [2, 1, 0]
    refused = await store.admit(plan(prefix, rpm))
    assert not refused.decision.admitted and refused.decision.refused_index == 0
    assert refused.decision.retry_after_us is not None
    assert 19 * SECOND < refused.decision.retry_after_us <= 20 * SECOND  # one request refills in 20 s
    assert refused.requests is not None and refused.requests.limit == 3 and refused.tokens is None


async def test_short_window_refills(store: LimitStore, prefix: str) -> None:
    rps = ("rps", Limit(LimitKind.REQUESTS, 2, SECOND))
    assert (await store.admit(plan(prefix, rps))).decision.admitted
    assert (await store.admit(plan(prefix, rps))).decision.admitted
    refused = await store.admit(plan(prefix, rps))
    assert not refused.decision.admitted and refused.decision.retry_after_us is not None
    assert refused.decision.retry_after_us <= SECOND // 2
    await asyncio.sleep(refused.decision.retry_after_us / 1e6 + 0.01)
    assert (await store.admit(plan(prefix, rps))).decision.admitted


async def test_tokens_reserved_then_refunded_or_charged_at_settlement(store: LimitStore, prefix: str) -> None:
    tpm = ("tpm", Limit(LimitKind.TOKENS, 1000, MINUTE))
    first = plan(prefix, tpm, prompt=100, completion=200)
    admitted = await store.admit(first)
    assert admitted.decision.admitted and admitted.tokens is not None
    assert admitted.tokens.remaining == 700
    await store.settle(first, 50 - 300, admitted.now_us)  # used 50 of the 300 reserved
    probe = await store.admit(plan(prefix, tpm, prompt=10))
    assert probe.tokens is not None and 940 <= probe.tokens.remaining <= 942  # + refill of a few ms
    second = plan(prefix, tpm, prompt=100)
    admitted = await store.admit(second)
    await store.settle(second, 500, admitted.now_us)  # the engine produced 500 unreserved tokens
    probe = await store.admit(plan(prefix, tpm, prompt=0))
    assert probe.tokens is not None and 340 <= probe.tokens.remaining <= 343


async def test_all_or_nothing_a_refusal_charges_no_limit(store: LimitStore, prefix: str) -> None:
    rpm = ("rpm", Limit(LimitKind.REQUESTS, 100, MINUTE))
    tpm = ("tpm", Limit(LimitKind.TOKENS, 100, MINUTE))
    assert (await store.admit(plan(prefix, rpm, tpm, prompt=90))).decision.admitted
    refused = await store.admit(plan(prefix, rpm, tpm, prompt=50))
    assert not refused.decision.admitted and refused.decision.refused_index == 1
    assert refused.requests is not None and refused.requests.remaining == 99  # not charged
    assert (await store.ledger(prefix + "ledger")).charged_tokens == 90


async def test_clamp_grants_what_is_left(store: LimitStore, prefix: str) -> None:
    tpm = ("tpm", Limit(LimitKind.TOKENS, 1000, MINUTE))
    result = await store.admit(plan(prefix, tpm, prompt=100, completion=2000, clamp=True))
    assert result.decision.admitted and result.decision.completion_tokens == 900
    refused = await store.admit(plan(prefix, tpm, prompt=100, completion=2000, clamp=True))
    assert not refused.decision.admitted


async def test_request_larger_than_the_limit_can_never_fit(store: LimitStore, prefix: str) -> None:
    refused = await store.admit(plan(prefix, ("tpm", Limit(LimitKind.TOKENS, 100, MINUTE)), prompt=150))
    assert not refused.decision.admitted and refused.decision.retry_after_us is None


async def test_daily_budget_is_a_fixed_window_adjusted_at_settlement(store: LimitStore, prefix: str) -> None:
    day = ("day", Limit(LimitKind.QUOTA, 1000, DAY))
    first = plan(prefix, day, prompt=600)
    admitted = await store.admit(first)
    assert admitted.decision.admitted
    refused = await store.admit(plan(prefix, day, prompt=600))
    assert not refused.decision.admitted and refused.decision.retry_after_us is not None
    assert 0 < refused.decision.retry_after_us <= DAY  # at the next UTC midnight
    await store.settle(first, 100 - 600, admitted.now_us)
    assert (await store.admit(plan(prefix, day, prompt=600))).decision.admitted
    assert not (await store.admit(plan(prefix, day, prompt=301))).decision.admitted


async def test_concurrency_slots_are_released_at_settlement(store: LimitStore, prefix: str) -> None:
    conc = ("conc", Limit(LimitKind.CONCURRENCY, 2))
    first, second = plan(prefix, conc), plan(prefix, conc)
    admitted = await store.admit(first)
    assert admitted.decision.admitted and (await store.admit(second)).decision.admitted
    refused = await store.admit(plan(prefix, conc))
    assert not refused.decision.admitted and refused.decision.retry_after_us == SECOND
    await store.settle(first, 0, admitted.now_us)
    assert (await store.admit(plan(prefix, conc))).decision.admitted


async def test_a_lease_whose_gateway_died_expires(store: LimitStore, prefix: str) -> None:
    conc = ("conc", Limit(LimitKind.CONCURRENCY, 1))
    assert (await store.admit(plan(prefix, conc, ttl_us=300_000))).decision.admitted  # never settled
    assert not (await store.admit(plan(prefix, conc))).decision.admitted
    await asyncio.sleep(0.4)
    assert (await store.admit(plan(prefix, conc))).decision.admitted


async def test_heartbeat_keeps_a_live_lease(store: LimitStore, prefix: str) -> None:
    conc = ("conc", Limit(LimitKind.CONCURRENCY, 1))
    live = plan(prefix, conc, ttl_us=400_000)
    admitted = await store.admit(live)
    assert admitted.decision.admitted
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await store.refresh([live]) == 1
    assert not (await store.admit(plan(prefix, conc))).decision.admitted  # 0.6 s > ttl, still held
    await store.settle(live, 0, admitted.now_us)
    assert await store.refresh([live]) == 0
    assert (await store.admit(plan(prefix, conc))).decision.admitted


async def test_ledger_counts_net_charges_and_open_leases(store: LimitStore, prefix: str) -> None:
    tpm = ("tpm", Limit(LimitKind.TOKENS, 10_000, MINUTE))
    plans = [plan(prefix, tpm, prompt=10, completion=90) for _ in range(5)]
    results = [await store.admit(p) for p in plans]
    assert [r.seq for r in results] == [1, 2, 3, 4, 5]
    ledger = await store.ledger(prefix + "ledger")
    assert (ledger.charged_tokens, ledger.open_leases) == (500, 5)
    for p, r, used in zip(plans, results, [40, 100, 0, 70, 130], strict=True):
        await store.settle(p, used - 100, r.now_us)
    ledger = await store.ledger(prefix + "ledger")
    assert (ledger.charged_tokens, ledger.open_leases) == (340, 0)


async def test_a_changed_window_keeps_the_whole_tokens_left(store: LimitStore, prefix: str) -> None:
    assert (await store.admit(plan(prefix, ("b", Limit(LimitKind.REQUESTS, 10, MINUTE))))).decision.admitted
    result = await store.admit(plan(prefix, ("b", Limit(LimitKind.REQUESTS, 10, SECOND))))
    assert result.requests is not None and result.requests.remaining == 8
