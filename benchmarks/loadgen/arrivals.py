"""When requests are released: open loop (Poisson or gamma arrivals at a rate, or all at once) and
closed loop (a cap on requests in flight), with ``vllm bench serve``'s definitions.

- ``rate`` requests/s with ``burstiness`` b: inter-arrival gaps are Gamma(shape=b, scale=1/(rate*b)),
  mean ``1/rate``; b = 1 is a Poisson process, b < 1 burstier, b > 1 more regular, b = inf constant.
  ``rate = inf`` releases everything at once.
- ``normalize`` (default, as vLLM does): the cumulative offsets are rescaled so the last request is
  released at exactly ``num_requests / rate``, which stabilizes throughput figures across seeds.
- ``max_concurrency``: at most that many requests in flight; with ``rate = inf`` this is a closed
  loop of that many users. The limit holds whatever the rate.
- ``use_timestamps``: replay a trace's own arrival times (``RequestSpec.timestamp``) instead.
Gaps come from ``numpy.random.RandomState(seed)``, whose stream numpy keeps stable forever; it is the
same generator and the same draws as vLLM's (``np.random.seed(seed)`` then one ``gamma`` per
request), so a dataset that draws nothing from numpy first gets vLLM's exact schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.workloads.spec import RequestSpec


@dataclass(frozen=True)
class ArrivalProcess:
    rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    normalize: bool = True
    use_timestamps: bool = False

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive (math.inf for all at once)")
        if not self.burstiness > 0:
            raise ValueError("burstiness must be positive")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")

    @property
    def closed_loop(self) -> bool:
        return math.isinf(self.rate) and self.max_concurrency is not None and not self.use_timestamps

    def settings(self) -> dict[str, Any]:
        return {"rate": _json_float(self.rate), "burstiness": _json_float(self.burstiness),
                "max_concurrency": self.max_concurrency, "seed": self.seed, "normalize": self.normalize,
                "use_timestamps": self.use_timestamps,
                "kind": "trace" if self.use_timestamps else "closed" if self.closed_loop else "open"}

    def offsets(self, specs: Sequence[RequestSpec]) -> list[float]:
        """Release time of each request, in seconds from the start of the run (non-decreasing)."""
        if self.use_timestamps:
            times = [spec.timestamp or 0.0 for spec in specs]
            base = min(times, default=0.0)
            return [max(0.0, t - base) for t in times]
        return arrival_offsets(len(specs), self.rate, self.burstiness, self.seed, self.normalize)


def arrival_offsets(count: int, rate: float, burstiness: float, seed: int,
                    normalize: bool = True) -> list[float]:
    if count == 0:
        return []
    if math.isinf(rate):
        return [0.0] * count
    if math.isinf(burstiness):
        gaps = [1.0 / rate] * count
    else:
        rng = np.random.RandomState(seed)
        scale = 1.0 / (rate * burstiness)
        gaps = [float(rng.gamma(shape=burstiness, scale=scale)) for _ in range(count)]
    offsets = list(np.cumsum(gaps, dtype=float))
    if normalize and offsets[-1] > 0:
        factor = (count / rate) / offsets[-1]
        offsets = [offset * factor for offset in offsets]
    return [float(offset) for offset in offsets]


def _json_float(value: float) -> float | str:
    return "inf" if math.isinf(value) else value
