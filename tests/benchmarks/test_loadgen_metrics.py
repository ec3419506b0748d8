"""Run aggregates against hand-computed values (throughputs, goodput, numpy-linear percentiles)."""

from __future__ import annotations

import pytest

from benchmarks.loadgen.metrics import aggregate, meets_slos, summarize_ms
from benchmarks.loadgen.records import RequestRecord


def rec(index: int, *, ttft: float | None = None, e2el: float | None = None, n: int | None = None,
        prompt: int | None = None, itl: list[float] | None = None, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, arrival=0.0, start=0.0, max_tokens=8, success=error is None,
                         error=error, ttft=ttft, e2el=e2el, completion_tokens=n, prompt_tokens=prompt,
                         itl=itl or [])


RECORDS = [
    rec(0, ttft=0.1, e2el=0.5, n=5, prompt=10, itl=[0.1, 0.1, 0.1, 0.1]),  # TPOT 0.1
    rec(1, ttft=0.2, e2el=1.2, n=3, prompt=20, itl=[0.5, 0.5]),  # TPOT 0.5
    rec(2, ttft=0.3, e2el=0.3, n=1, prompt=30),  # one token: no TPOT
    rec(3, error="HTTP 503: overloaded\nmore detail"),
    rec(4, ttft=0.4, e2el=0.9, itl=[0.5]),  # no usage chunk
]


def test_counts_and_throughputs() -> None:
    agg = aggregate(RECORDS, duration=2.0)
    assert (agg["requests"], agg["completed"], agg["failed"], agg["without_usage"]) == (5, 4, 1, 1)
    assert agg["failure_reasons"] == {"HTTP 503: overloaded": 1}
    assert (agg["total_prompt_tokens"], agg["total_output_tokens"]) == (60, 9)
    assert agg["request_throughput"] == pytest.approx(2.0)
    assert agg["output_throughput"] == pytest.approx(4.5)
    assert agg["total_token_throughput"] == pytest.approx(34.5)
    assert agg["goodput"] is None and agg["good_requests"] is None


def test_latency_statistics_in_ms_with_linear_interpolation() -> None:
    agg = aggregate(RECORDS, duration=2.0)
    ttft = agg["ttft_ms"]  # 100, 200, 300, 400
    assert ttft["count"] == 4
    assert (ttft["mean"], ttft["p50"], ttft["p90"], ttft["p99"]) == pytest.approx((250, 250, 370, 397))
    tpot = agg["tpot_ms"]  # 100, 500
    assert (tpot["count"], tpot["mean"], tpot["p50"], tpot["p90"], tpot["p99"]) == pytest.approx(
        (2, 300, 300, 460, 496))
    itl = agg["itl_ms"]  # pooled: 100 x4, 500 x3
    assert (itl["count"], itl["mean"], itl["p50"], itl["p90"]) == pytest.approx((7, 1900 / 7, 100, 500))
    e2el = agg["e2el_ms"]  # 300, 500, 900, 1200
    assert (e2el["p50"], e2el["p90"]) == pytest.approx((700, 1110))
    # mean 725; deviations -225, 475, -425, 175 (population std, as numpy's default)
    assert e2el["mean"] == pytest.approx(725)
    assert e2el["std"] == pytest.approx(((225**2 + 475**2 + 425**2 + 175**2) / 4) ** 0.5)


@pytest.mark.parametrize(("slos", "good"), [
    ({"ttft": 300}, 3),  # 100, 200, 300 ms meet it; 400 ms and the failed request do not
    ({"tpot": 200}, 2),  # 100 ms yes, 500 ms no, one token counts as 0, no usage cannot show it
    ({"ttft": 300, "e2el": 1000}, 2),  # the 1,200 ms E2EL drops out
])
def test_goodput_counts_requests_meeting_every_slo(slos: dict[str, float], good: int) -> None:
    agg = aggregate(RECORDS, duration=2.0, slos=slos)
    assert agg["good_requests"] == good
    assert agg["goodput"] == pytest.approx(good / 2.0)


def test_slo_edges() -> None:
    assert meets_slos(RECORDS[0], {"ttft": 100})  # equal to the limit meets it
    assert not meets_slos(RECORDS[3], {})  # a failed request is never good
    with pytest.raises(ValueError, match="unknown SLO"):
        meets_slos(RECORDS[0], {"itl": 1})


def test_empty_samples_are_none_and_duration_must_be_positive() -> None:
    assert summarize_ms([]) == {"count": 0, "mean": None, "std": None, "p50": None, "p90": None, "p99": None}
    agg = aggregate([RECORDS[3]], duration=1.0)
    assert agg["completed"] == 0 and agg["ttft_ms"]["p50"] is None and agg["request_throughput"] == 0
    with pytest.raises(ValueError):
        aggregate(RECORDS, duration=0.0)
