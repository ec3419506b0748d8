"""What the benchmark reads from the engines and the gateway while it runs.

- ``prefix_counters``: an engine's own ``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``
  (tokens), read from its ``/metrics`` (works for the sim and a real vLLM).
- ``StateSampler``: a background task that reads each sim's ``GET /sim/state`` every ``interval_s``:
  running + waiting requests (the engine's in-flight count) and its prefix counters, for the load balance
  and the hit rate over time. An engine that stops answering (killed) keeps its last sample.
- ``policy_decisions``: the gateway's ``gateway_policy_decisions_total`` by branch.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from backends.prom_text import parse_metrics

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
DECISIONS = "gateway_policy_decisions_total"
_SHORT = aiohttp.ClientTimeout(total=5)
_SAMPLE = aiohttp.ClientTimeout(total=1)


@dataclass(frozen=True)
class PrefixCounters:
    hits: float
    queries: float

    def __sub__(self, other: PrefixCounters) -> PrefixCounters:
        return PrefixCounters(self.hits - other.hits, self.queries - other.queries)

    def __add__(self, other: PrefixCounters) -> PrefixCounters:
        return PrefixCounters(self.hits + other.hits, self.queries + other.queries)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries > 0 else None


ZERO = PrefixCounters(0.0, 0.0)


async def prefix_counters(session: aiohttp.ClientSession, url: str) -> PrefixCounters:
    async with session.get(f"{url}/metrics", timeout=_SHORT) as response:
        response.raise_for_status()
        samples = parse_metrics(await response.text(), (HITS, QUERIES))
    return PrefixCounters(samples.sum(HITS) or 0.0, samples.sum(QUERIES) or 0.0)


async def fleet_counters(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, PrefixCounters]:
    values = await asyncio.gather(*(prefix_counters(session, url) for url in urls.values()))
    return dict(zip(urls, values, strict=True))


async def policy_decisions(session: aiohttp.ClientSession, gateway_url: str) -> dict[str, float]:
    """Routing decisions so far, summed over models, by branch (hit, cold, spill, key, fallback, ...)."""
    async with session.get(f"{gateway_url}/metrics", timeout=_SHORT) as response:
        response.raise_for_status()
        text = await response.text()
    by_branch: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DECISIONS:
                branch = sample.labels["branch"]
                by_branch[branch] = by_branch.get(branch, 0.0) + float(sample.value)
    return by_branch


@dataclass
class Sample:
    """One reading of every engine: seconds since the sampler started, then per engine."""

    t: float
    in_flight: dict[str, int]
    counters: dict[str, PrefixCounters]
    alive: dict[str, bool]


@dataclass
class StateSampler:
    session: aiohttp.ClientSession
    urls: dict[str, str]
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    _task: asyncio.Task[None] | None = None
    _last: dict[str, tuple[int, PrefixCounters]] = field(default_factory=dict)

    def now(self) -> float:
        return time.perf_counter() - self.started

    def start(self) -> None:
        self.started = time.perf_counter()
        self._task = asyncio.create_task(self._run(), name="affinity-state-sampler")

    async def stop(self) -> list[Sample]:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.samples

    async def _read(self, name: str, url: str) -> tuple[str, int, PrefixCounters, bool]:
        try:
            async with self.session.get(f"{url}/sim/state", timeout=_SAMPLE) as response:
                state = await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            in_flight, counters = self._last.get(name, (0, ZERO))
            return name, in_flight, counters, False
        in_flight = int(state["running"]) + int(state["waiting"])
        counters = PrefixCounters(float(state["prefix_cache_hits"]), float(state["prefix_cache_queries"]))
        self._last[name] = (in_flight, counters)
        return name, in_flight, counters, True

    async def _run(self) -> None:
        next_at = time.perf_counter()
        while True:
            t = self.now()
            readings = await asyncio.gather(*(self._read(name, url) for name, url in self.urls.items()))
            self.samples.append(Sample(t, {name: n for name, n, _, _ in readings},
                                       {name: c for name, _, c, _ in readings},
                                       {name: ok for name, _, _, ok in readings}))
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
