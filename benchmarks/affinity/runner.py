"""One measured run: send a slice of the workload at one rate (through the gateway, or pinned straight to
the engines for the oracle) while sampling the engines, and reduce it to the figures the report needs.

The hit rate is the engines' own: the delta of ``vllm:prefix_cache_hits_total`` over the delta of
``vllm:prefix_cache_queries_total``, summed over the engines, between just before the first request and
just after the last one ends. TTFT and throughput are the load generator's (``vllm bench serve``'s
definitions). CPU shares are CPU seconds over the run's wall time (1.0 = one core).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.affinity.analysis import balance, pinned_share
from benchmarks.affinity.fleet import GatewayProcess, SimFleet, cpu_seconds
from benchmarks.affinity.observe import ZERO, StateSampler, fleet_counters, policy_decisions
from benchmarks.affinity.oracle import run_pinned
from benchmarks.affinity.settings import BACKEND_HEADER, TEMPLATE_TOKENS, BenchSettings
from benchmarks.loadgen import ArrivalProcess, RequestRecord, run_load
from benchmarks.loadgen.runner import RunResult
from benchmarks.workloads import RequestSpec

_TTFT_KEYS = ("mean", "p50", "p90", "p99")


@dataclass
class Target:
    """Where a run's requests go: a gateway, or (the oracle) each tenant's pinned engine."""

    fleet: SimFleet
    session: aiohttp.ClientSession
    gateway: GatewayProcess | None = None
    pins: dict[str, str] | None = None

    async def send(self, settings: BenchSettings, specs: Sequence[RequestSpec], arrival: ArrivalProcess,
                   on_progress: Callable[[RequestRecord], None] | None = None) -> RunResult:
        model = settings.geometry.model
        if self.gateway is not None:
            return await run_load(self.gateway.url, specs, arrival, model=model, api=settings.api,
                                  ignore_eos=True, capture_headers=[BACKEND_HEADER], on_progress=on_progress)
        assert self.pins is not None, "a target needs a gateway or tenant pins"
        return await run_pinned(self.fleet.urls, self.pins, specs, arrival, model=model,
                                header=BACKEND_HEADER, api=settings.api)


def request_count(rate: float, seconds: float, minimum: int) -> int:
    return max(minimum, round(rate * seconds))


async def warm_up(settings: BenchSettings, target: Target, rate: float) -> dict[str, Any]:
    """Traffic from another seed (same tenant prefixes) so the caches hold what this policy placed."""
    count = request_count(rate, settings.timing.warmup_s, settings.timing.min_requests)
    specs = list(settings.workload.generate(count, settings.seed + 10_000))
    result = await target.send(settings, specs, ArrivalProcess(rate=rate, seed=settings.seed + 10_000))
    return {"requests": count, "rate": rate, "failed": sum(1 for r in result.records if not r.success),
            "duration_s": result.duration}


async def measure(settings: BenchSettings, target: Target, rate: float, seed: int) -> dict[str, Any]:
    timing = settings.timing
    fleet = target.fleet
    count = request_count(rate, timing.measure_s, timing.min_requests)
    specs = list(settings.workload.generate(count, seed))
    pids = {"gateway": target.gateway.pid} if target.gateway else {}
    pids.update(fleet.pids())
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    counters_before = await fleet_counters(target.session, fleet.urls)
    decisions_before = await policy_decisions(target.session, target.gateway.url) if target.gateway else {}
    load_before = os.getloadavg()
    sampler = StateSampler(target.session, fleet.urls, timing.sample_interval_s)
    sampler.start()
    wall_start = time.perf_counter()
    result = await target.send(settings, specs, ArrivalProcess(rate=rate, seed=seed))
    wall = time.perf_counter() - wall_start
    samples = await sampler.stop()
    counters_after = await fleet_counters(target.session, fleet.urls)
    client_cpu = time.process_time() - client_before
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    decisions_after = await policy_decisions(target.session, target.gateway.url) if target.gateway else {}

    deltas = {name: counters_after[name] - counters_before.get(name, ZERO) for name in counters_after}
    total = ZERO
    for delta in deltas.values():
        total = total + delta
    aggregate = result.aggregate()
    cpu_share = {name: (after - before) / wall for name, after in cpu_after.items()
                 if after is not None and (before := cpu_before.get(name)) is not None}
    cpu_share["client"] = client_cpu / wall
    served = Counter(r.headers.get(BACKEND_HEADER, "?") for r in result.records if r.success)
    return {
        "rate": rate,
        "seed": seed,
        "requests": count,
        "hit_rate": total.hit_rate,
        "hit_rate_per_engine": {name: delta.hit_rate for name, delta in deltas.items()},
        "queried_tokens": total.queries,
        "ttft_ms": {key: aggregate["ttft_ms"][key] for key in _TTFT_KEYS},
        "tpot_ms": {key: aggregate["tpot_ms"][key] for key in _TTFT_KEYS},
        "e2el_ms": {key: aggregate["e2el_ms"][key] for key in _TTFT_KEYS},
        "request_throughput": aggregate["request_throughput"],
        "output_throughput": aggregate["output_throughput"],
        "total_token_throughput": aggregate["total_token_throughput"],
        "completed": aggregate["completed"],
        "failed": aggregate["failed"],
        "failure_reasons": aggregate["failure_reasons"],
        "duration_s": result.duration,
        "balance": balance(samples, fleet.names),
        "requests_per_engine": dict(sorted(served.items())),
        "tenant_pinned_share": pinned_share(result.records, BACKEND_HEADER),
        "policy_decisions": {branch: value - decisions_before.get(branch, 0.0)
                             for branch, value in decisions_after.items()
                             if value - decisions_before.get(branch, 0.0) > 0},
        "cpu_share": cpu_share,
        "gateway_cpu_ms_per_request": (cpu_share["gateway"] * wall * 1000 / count
                                       if "gateway" in cpu_share else None),
        "prompt_tokens_check": prompt_token_check(result.records),
        "loadavg_1m": [load_before[0], os.getloadavg()[0]],
    }


def prompt_token_check(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Engine-reported prompt tokens against the workload's words, for first turns (prefix + one suffix):
    expected ``words + TEMPLATE_TOKENS`` on the sim over completions."""
    differences = Counter((r.prompt_tokens or 0) - (r.prompt_words or 0)
                          for r in records if r.success and r.turn == 0 and r.prompt_tokens is not None)
    first = next((r for r in records if r.success and r.turn == 0 and r.prompt_tokens), None)
    return {"expected_extra_tokens": TEMPLATE_TOKENS, "extra_tokens_seen": dict(differences),
            "example_prompt_words": first.prompt_words if first else None,
            "example_prompt_tokens": first.prompt_tokens if first else None}
