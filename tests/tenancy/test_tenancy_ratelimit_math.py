"""The pure rate-limit arithmetic (policies/ratelimit.py): bucket refill, exactness of admissions over
time (never above capacity + rate x elapsed, and no under-admission for a client that retries when
told), clamping, all-or-nothing decisions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ratelimit as rl
from policies.ratelimit import Demand, Limit, LimitKind

MINUTE = 60_000_000


def test_bucket_refills_linearly_and_stops_at_full() -> None:
    full = 10 * MINUTE
    assert rl.bucket_refill(0, 0, 6_000_000, 10, MINUTE) == 60_000_000  # 6 s refill 1 token
    assert rl.bucket_refill(0, 0, MINUTE, 10, MINUTE) == full
    assert rl.bucket_refill(0, 0, 10 * MINUTE, 10, MINUTE) == full
    assert rl.bucket_refill(full + 5, 0, 0, 10, MINUTE) == full  # capacity lowered by config
    assert rl.bucket_refill(-full, 0, MINUTE, 10, MINUTE) == 0  # a debt takes a window to repay
    assert rl.bucket_refill(123, 50, 40, 10, MINUTE) == 123  # clock behind: no refill, no loss


def test_adjust_refunds_up_to_full_and_charges_down_to_one_window_of_debt() -> None:
    full = 100 * MINUTE
    assert rl.bucket_adjust(0, -30, 100, MINUTE) == 30 * MINUTE
    assert rl.bucket_adjust(full - MINUTE, -30, 100, MINUTE) == full
    assert rl.bucket_adjust(0, 10**6, 100, MINUTE) == -full


def test_rescale_keeps_whole_tokens() -> None:
    assert rl.bucket_rescale(7 * MINUTE + 5, MINUTE, 1_000_000) == 7_000_000


def test_remaining_and_reset() -> None:
    assert rl.bucket_remaining(-5, MINUTE) == 0
    assert rl.bucket_remaining(3 * MINUTE - 1, MINUTE) == 2
    assert rl.bucket_reset_us(0, 60, MINUTE) == MINUTE
    assert rl.bucket_reset_us(60 * MINUTE, 60, MINUTE) == 0


def test_quota_windows_are_utc_days() -> None:
    day = 86_400_000_000
    assert rl.quota_period(day * 5 + 1, day) == 5
    assert rl.quota_reset_us(day * 5 + 1, day) == day - 1


def test_decide_is_all_or_nothing_and_names_the_first_refusal() -> None:
    limits = [Limit(LimitKind.REQUESTS, 10, MINUTE), Limit(LimitKind.TOKENS, 1000, MINUTE),
              Limit(LimitKind.CONCURRENCY, 2)]
    state = [10 * MINUTE, 100 * MINUTE, 2]  # tokens: 100 left; concurrency full
    decision = rl.decide(limits, state, 0, Demand(50, 100))
    assert not decision.admitted
    assert decision.refused_index == 1
    # tokens need 50 more at 1000/min = 3 s; concurrency is retried after 1 s: the longer wins
    assert decision.retry_after_us == 3_000_000


def test_decide_reports_impossible_requests() -> None:
    decision = rl.decide([Limit(LimitKind.TOKENS, 100, MINUTE)], [100 * MINUTE], 0, Demand(80, 40))
    assert not decision.admitted and decision.retry_after_us is None


def test_clamp_lowers_completion_to_what_every_token_limit_has_left() -> None:
    limits = [Limit(LimitKind.TOKENS, 1000, MINUTE), Limit(LimitKind.QUOTA, 500, 86_400_000_000)]
    state = [300 * MINUTE, 100]  # bucket 300 left, quota 400 left
    decision = rl.decide(limits, state, 0, Demand(100, 1000, clamp=True, min_completion_tokens=16))
    assert decision.admitted and decision.completion_tokens == 200
    clamped = Demand(100, 1000, clamp=True, min_completion_tokens=16)
    refused = rl.decide(limits, [110 * MINUTE, 100], 0, clamped)
    assert not refused.admitted and refused.completion_tokens == 16


def test_report_shows_the_tightest_bucket() -> None:
    limits = [Limit(LimitKind.REQUESTS, 100, MINUTE), Limit(LimitKind.REQUESTS, 10, MINUTE)]
    report = rl.report(limits, [50 * MINUTE, 9 * MINUTE], LimitKind.REQUESTS)
    assert report == rl.Report(limit=10, remaining=9, reset_us=6_000_000)
    assert rl.report(limits, [0, 0], LimitKind.TOKENS) is None


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 50), window=st.sampled_from([1_000_000, MINUTE, 7_777_777]),
       arrivals=st.lists(st.tuples(st.integers(0, 3_000_000), st.integers(1, 60)), min_size=1, max_size=80))
def test_admitted_cost_never_exceeds_the_bucket_allowance(capacity: int, window: int,
                                                           arrivals: list[tuple[int, int]]) -> None:
    limit = Limit(LimitKind.TOKENS, capacity, window)
    level, updated, now, charged, start = limit.full, 0, 0, 0, 0
    for gap, cost in arrivals:
        now += gap
        level = rl.bucket_refill(level, updated, now, capacity, window)
        updated = now
        decision = rl.decide([limit], [level], now, Demand(cost, 0))
        if decision.admitted:
            level = rl.charge(limit, level, cost)
            charged += cost
            assert charged * window <= capacity * window + capacity * (now - start)
        elif decision.retry_after_us is not None:
            later = rl.bucket_refill(level, now, now + decision.retry_after_us, capacity, window)
            assert rl.decide([limit], [later], now, Demand(cost, 0)).admitted
            earlier = rl.bucket_refill(level, now, now + decision.retry_after_us - 1, capacity, window)
            too_early = rl.decide([limit], [earlier], now, Demand(cost, 0))
            assert decision.retry_after_us == 0 or not too_early.admitted


@settings(max_examples=50, deadline=None)
@given(capacity=st.integers(1, 30), window=st.sampled_from([1_000_000, MINUTE]), steps=st.integers(1, 200))
def test_a_client_retrying_when_told_gets_the_whole_allowance(capacity: int, window: int, steps: int) -> None:
    limit = Limit(LimitKind.REQUESTS, capacity, window)
    level, now, admitted, waiting = limit.full, 0, 0, 0
    for _ in range(capacity + steps):  # past the initial burst
        decision = rl.decide([limit], [level], now, Demand(0, 0))
        if decision.admitted:
            level = rl.charge(limit, level, 0)
            admitted, waiting = admitted + 1, 0
            continue
        assert decision.retry_after_us is not None
        level = rl.bucket_refill(level, now, now + decision.retry_after_us, capacity, window)
        now += decision.retry_after_us
        waiting = 1  # the request that just waited is admitted at its next try
    # exact: everything accrued so far was admitted, but for the fraction of one request
    assert admitted + waiting == capacity + (capacity * now) // window
