"""The audit of the end-to-end exactness test: a token bucket of ``capacity`` per ``window``, full at
the start, allows ``capacity + capacity x elapsed / window`` (tests/tenancy/test_tenancy_exactness.py
audits the store the same way, operation by operation).

Through the gateways no single admission is visible with its Redis time, so the evidence is:

- ledger samples: the tenant's ledger (admissions, settlements, net tokens charged), read together
  with Redis's ``TIME`` in one MULTI every few milliseconds. Each sample is exact at its instant. A
  correct limiter keeps every sample within the allowance since the bucket started, and the growth
  between any two samples within ``capacity + capacity x (t_j - t_i) / window`` (token-bucket
  conformance over every window; with settlements that only refund, refunds can only lower the net
  charge). The bucket started after the last sample that saw no admission, so measuring from that
  sample never hides an overshoot.
- the clients' own record: a response's head arrived after its admission, on the same host clock,
  so counting responses by their arrival can only under-count what had been admitted by then.

Integers scaled by the window keep the comparisons exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    t_us: int  # Redis TIME
    admitted: int
    settled: int
    charged: int  # net tokens


def from_ledger_rows(rows: Sequence[tuple[int, int, int, int]]) -> list[Sample]:
    """Rows of (time_us, charged, open, seq); seq counts admissions and settlements, open their difference."""
    return [Sample(t, (seq + open_) // 2, (seq - open_) // 2, charged) for t, charged, open_, seq in rows]


def bucket_start(samples: Sequence[Sample]) -> int:
    """The last sample before the first admission (the bucket was created after it)."""
    before = [s.t_us for s in samples if s.admitted == 0]
    assert before, "the sampler started after the first admission"
    return before[-1]


def conformance(points: Sequence[tuple[int, int]], capacity: int, window_us: int, start_us: int
                ) -> dict[str, float]:
    """Worst excess over the allowance of a cumulative series [(t_us, value)] from the start, and
    over any window between two points; 0 means never over."""
    worst_start = worst_window = -capacity * window_us
    lowest = 0 - capacity * start_us  # (value x window - capacity x t) at the start: value 0
    for t_us, value in points:
        level = value * window_us - capacity * t_us
        worst_start = max(worst_start, level - (0 - capacity * start_us) - capacity * window_us)
        worst_window = max(worst_window, level - lowest - capacity * window_us)
        lowest = min(lowest, level)
    return {"overshoot_from_start": max(0, worst_start) / window_us,
            "overshoot_any_window": max(0, worst_window) / window_us}


def allowance(capacity: int, window_us: int, start_us: int, t_us: int) -> float:
    return capacity + capacity * (t_us - start_us) / window_us


def usage_at(points: Sequence[tuple[int, int]], t_us: int) -> tuple[int, int]:
    """The last point at or before ``t_us``."""
    chosen = points[0]
    for point in points:
        if point[0] <= t_us:
            chosen = point
    return chosen


def binding_since(points: Sequence[tuple[int, int]], capacity: int, window_us: int, start_us: int,
                  after_us: int, slack: int) -> int | None:
    """When the limit started to bind after ``after_us``: the first point with less than ``slack``
    of the allowance left."""
    for t_us, value in points:
        if t_us >= after_us and allowance(capacity, window_us, start_us, t_us) - value < slack:
            return t_us
    return None


def under_admission(points: Sequence[tuple[int, int]], capacity: int, window_us: int, start_us: int,
                    at_us: int, steady_from_us: int | None = None) -> dict[str, Any]:
    """How much of the allowance went unused by ``at_us`` (the allowance counted from ``start_us``,
    which is before the true start: the figure errs high). With ``steady_from_us``: the same over the
    steady state, whose allowance is the refill from then on plus what was left of the allowance then."""
    t_us, used = usage_at(points, at_us)
    allowed = allowance(capacity, window_us, start_us, t_us)
    figures: dict[str, Any] = {"at_s": round((t_us - start_us) / 1e6, 3), "used": used,
                               "allowance": round(allowed, 2),
                               "under_admission_pct": round(100 * (allowed - used) / allowed, 3)}
    if steady_from_us is not None:
        t_from, used_from = usage_at(points, steady_from_us)
        steady_allowed, steady = allowed - used_from, used - used_from
        unused = 100 * (steady_allowed - steady) / steady_allowed
        figures["steady_state"] = {"from_s": round((t_from - start_us) / 1e6, 3), "used": steady,
                                   "allowance": round(steady_allowed, 2),
                                   "under_admission_pct": round(unused, 3)}
    return figures


def client_view(arrivals: Sequence[tuple[float, int]], capacity: int, window_us: int, start_us: int
                ) -> float:
    """Worst excess of what the clients received, counted at the arrival of each response head,
    over the allowance; ``arrivals`` are (head time in s, amount)."""
    total = 0
    worst = -capacity * window_us
    for head_s, amount in sorted(arrivals):
        total += amount
        t_us = round(head_s * 1e6)
        worst = max(worst, total * window_us - capacity * window_us - capacity * (t_us - start_us))
    return max(0, worst) / window_us
