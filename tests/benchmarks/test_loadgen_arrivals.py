"""Arrival processes: statistics of the gaps, determinism by seed, vLLM's schedule, trace timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.loadgen.arrivals import ArrivalProcess, arrival_offsets
from benchmarks.workloads.spec import RequestSpec


def gaps(offsets: list[float]) -> np.ndarray:
    return np.diff([0.0, *offsets])


@pytest.mark.parametrize("rate", [0.5, 5.0, 200.0])
def test_poisson_mean_gap_is_one_over_rate_and_exponential(rate: float) -> None:
    g = gaps(arrival_offsets(20_000, rate, 1.0, seed=3, normalize=False))
    assert g.mean() == pytest.approx(1 / rate, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    assert all(g >= 0)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_keeps_the_mean_and_sets_cv_to_one_over_sqrt_b(burstiness: float) -> None:
    g = gaps(arrival_offsets(20_000, 2.0, burstiness, seed=5, normalize=False))
    assert g.mean() == pytest.approx(0.5, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_deterministic_by_seed() -> None:
    assert arrival_offsets(100, 3.0, 1.0, seed=7) == arrival_offsets(100, 3.0, 1.0, seed=7)
    assert arrival_offsets(100, 3.0, 1.0, seed=7) != arrival_offsets(100, 3.0, 1.0, seed=8)


def test_normalized_schedule_ends_at_n_over_rate_and_matches_vllm() -> None:
    offsets = arrival_offsets(50, 4.0, 0.5, seed=11)
    assert offsets[-1] == pytest.approx(50 / 4.0)
    assert offsets == sorted(offsets)
    # vllm.benchmarks.serve.get_request, transcribed: np.random.seed(seed), one gamma per request,
    # cumulative sum, rescaled to num_requests / rate.
    np_state = np.random.RandomState(11)
    delays = list(np.cumsum([np_state.gamma(shape=0.5, scale=1.0 / (4.0 * 0.5)) for _ in range(50)]))
    vllm = [d * (50 / 4.0) / delays[-1] for d in delays]
    assert offsets == pytest.approx(vllm, rel=1e-12)


def test_infinite_rate_and_infinite_burstiness() -> None:
    assert arrival_offsets(3, math.inf, 1.0, seed=0) == [0.0, 0.0, 0.0]
    assert arrival_offsets(4, 2.0, math.inf, seed=0) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert arrival_offsets(0, 2.0, 1.0, seed=0) == []


def test_process_settings_kinds_and_trace_timestamps() -> None:
    assert ArrivalProcess(max_concurrency=4).closed_loop
    assert ArrivalProcess(max_concurrency=4).settings()["kind"] == "closed"
    assert ArrivalProcess(rate=2.0).settings() | {"seed": 0} == {
        "rate": 2.0, "burstiness": 1.0, "max_concurrency": None, "seed": 0, "normalize": True,
        "use_timestamps": False, "kind": "open"}
    specs = [RequestSpec(index=i, prompt="x", max_tokens=1, timestamp=t)
             for i, t in enumerate([5.0, 5.5, 7.0])]
    assert ArrivalProcess(use_timestamps=True).offsets(specs) == [0.0, 0.5, 2.0]
    for bad in ({"rate": 0.0}, {"burstiness": -1.0}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            ArrivalProcess(**bad)  # type: ignore[arg-type]
