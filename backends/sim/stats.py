"""Raw engine statistics the scheduler and handlers update; the dialects' metrics render them.

Plain numbers and fixed-bucket histograms, so recording a token costs a few attribute updates. Nothing
here knows a metric name: ``metrics_vllm`` and ``metrics_tgi`` map these onto vLLM's and TGI's names.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

# vLLM's default histogram buckets (vllm/v1/metrics/buckets.py in vLLM 0.32).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# TGI's router: durations from 0.1 ms growing by 1.5x, token counts as powers of two.
TGI_DURATION_BUCKETS = tuple(0.0001 * 1.5**i for i in range(35))
TGI_TOKEN_BUCKETS = tuple(float(2**i) for i in range(1, 16))


def one_two_five_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to ``max_value`` (token-count histograms)."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus buckets."""
        pairs: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            pairs.append((_format_bound(bound), running))
        pairs.append(("+Inf", running + self.counts[-1]))
        return pairs


def _format_bound(bound: float) -> str:
    return repr(float(bound))


@dataclass
class EngineStats:
    max_model_len: int
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens_cached: int = 0
    preemptions: int = 0
    steps_prefill: int = 0
    steps_decode: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    # Front-end counters (TGI names them; vLLM has none of its own).
    requests_received: int = 0
    requests_failed: dict[str, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prefill: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    decode: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    step_prefill: Histogram = field(default_factory=lambda: Histogram(TGI_DURATION_BUCKETS))
    step_decode: Histogram = field(default_factory=lambda: Histogram(TGI_DURATION_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(TGI_TOKEN_BUCKETS))
    request_prompt_tokens: Histogram = field(init=False)
    request_generation_tokens: Histogram = field(init=False)
    request_max_tokens: Histogram = field(init=False)

    def __post_init__(self) -> None:
        buckets = one_two_five_buckets(self.max_model_len)
        self.request_prompt_tokens = Histogram(buckets)
        self.request_generation_tokens = Histogram(buckets)
        self.request_max_tokens = Histogram(buckets)

    def count_finished(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def count_failure(self, kind: str) -> None:
        self.requests_failed[kind] = self.requests_failed.get(kind, 0) + 1
