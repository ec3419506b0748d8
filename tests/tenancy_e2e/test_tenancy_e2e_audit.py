"""The exactness audit is not vacuous: on series built from the token-bucket definition it finds no
overshoot for an exact limiter and finds the overshoot of one that lets each of two replicas spend
its own full bucket, from the start, in a later window and as the clients saw it."""

from __future__ import annotations

from tests.tenancy_e2e import exactness_audit as audit

WINDOW = 60_000_000
CAPACITY = 600  # 10 a second


def exact_limiter(start: int, seconds: int, replicas: int = 1) -> list[tuple[int, int]]:
    """Cumulative admissions sampled every 10 ms under constant demand: the full bucket at once,
    then the refill; ``replicas`` limiters that each keep their own bucket admit that many times."""
    points = []
    for step in range(seconds * 100 + 1):
        t = start + step * 10_000
        allowed = CAPACITY + CAPACITY * (t - start) // WINDOW
        points.append((t, replicas * allowed))
    return points


def test_an_exact_limiter_passes_and_uses_its_allowance() -> None:
    start = 1_000_000
    points = exact_limiter(start, 30)
    figures = audit.conformance(points, CAPACITY, WINDOW, start)
    assert figures == {"overshoot_from_start": 0, "overshoot_any_window": 0}
    used = audit.under_admission(points, CAPACITY, WINDOW, start, points[-1][0], start + 5_000_000)
    assert 0 <= used["under_admission_pct"] < 0.2 and 0 <= used["steady_state"]["under_admission_pct"] < 1
    assert audit.binding_since(points, CAPACITY, WINDOW, start, start, 2) == start


def test_two_replicas_with_their_own_buckets_are_caught() -> None:
    start = 1_000_000
    points = exact_limiter(start, 30, replicas=2)
    figures = audit.conformance(points, CAPACITY, WINDOW, start)
    assert figures["overshoot_from_start"] >= CAPACITY
    assert audit.client_view([(t / 1e6, 1) for t, _ in points[:1]] * CAPACITY * 2, CAPACITY, WINDOW, start) \
        == CAPACITY


def test_a_burst_after_a_long_idle_is_caught_in_its_window() -> None:
    """A bucket idle for a minute holds one capacity, not two: admitting two capacities at once then
    stays within the allowance counted from the start, but not within that one second."""
    points = [(s * 1_000_000, 0) for s in range(61)] + [(61_000_000, 2 * CAPACITY)]
    figures = audit.conformance(points, CAPACITY, WINDOW, 0)
    assert figures["overshoot_from_start"] == 0
    assert figures["overshoot_any_window"] == 2 * CAPACITY - (CAPACITY + CAPACITY // 60)
