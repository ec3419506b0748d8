"""Micro-benchmark of one prefix_affinity routing decision: ``rank()`` + ``record()``.

Workload: 64 tenants, each with a shared prefix of 3/4 of the prompt and a unique 1/4 suffix, plus 25%
fully fresh prompts (the cold branch); the fleet's in-flight counts are redrawn per request (0-8), and
fresh ``Candidate`` objects are built per request as the gateway does (not timed). Each backend reports a
cache of 4096 x 16 tokens (1024 index blocks of 256 characters), and the index is warmed with 3000
decisions first, so timing happens in steady state, with evictions. Sweeps prompt size (1-16 KB) x
backends (4, 8, 16), and block size at 16 backends / 8 KB.

Each decision is timed twice: wall clock (``perf_counter_ns``) and this thread's CPU time
(``thread_time_ns``, which leaves out time the OS ran other processes: the dev box is shared). The policy
is deterministic, so each configuration is replayed from scratch several times and every decision keeps
its minimum over the replays: its cost with the least interference (one replay's raw times are kept too).
Writes benchmarks/results/routing_micro.json and routing_micro.png.

    .venv/bin/python benchmarks/routing_micro.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.base import Candidate, RoutingContext
from policies.prefix_affinity import PrefixAffinity, PrefixAffinityConfig
from policies.prefix_hash import DEFAULT_BLOCK_CHARS, PrefixHasher

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_KB = (1, 2, 4, 8, 16)
BACKENDS = (4, 8, 16)
BLOCK_SWEEP = (64, 128, 256, 512)
TARGET_US = 50.0
TENANTS = 64
COLD_SHARE = 0.25
CACHE_BLOCKS = 4096
CACHE_BLOCK_SIZE = 16


@dataclass(frozen=True)
class Measurement:
    prompt_kb: int
    backends: int
    block_chars: int
    decisions: int
    wall_us: dict[str, float]
    cpu_us: dict[str, float]
    wall_us_single_run: dict[str, float]
    cpu_us_single_run: dict[str, float]
    hash_cpu_us_p50: float
    branches: dict[str, int]


def text_pool(rng: random.Random, chars: int) -> str:
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(3000)]
    pool = " ".join(rng.choices(words, k=chars // 5))
    while len(pool) < chars:
        pool += " " + pool
    return pool[:chars]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:  # linear interpolation, numpy's default
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "mean": round(statistics.fmean(ordered), 2),
        "p50": round(at(0.50), 2),
        "p90": round(at(0.90), 2),
        "p99": round(at(0.99), 2),
    }


def timer_overhead_ns() -> tuple[float, float]:
    """The cost of one timed empty interval, subtracted from every sample."""
    walls, cpus = [], []
    for _ in range(2000):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    return statistics.median(walls), statistics.median(cpus)


Request = tuple[list[Candidate], RoutingContext]


def workload(prompt_kb: int, backends: int, count: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    size = prompt_kb * 1024
    pool = text_pool(rng, 64 * 1024)
    shared = size * 3 // 4
    prefixes = [pool[rng.randrange(len(pool) - shared) :][:shared] for _ in range(TENANTS)]
    names = [f"backend-{i}" for i in range(backends)]
    requests: list[Request] = []
    for _ in range(count):
        if rng.random() < COLD_SHARE:
            start = rng.randrange(len(pool) - size)
            prompt = pool[start : start + size]
        else:
            start = rng.randrange(len(pool) - (size - shared))
            prompt = rng.choice(prefixes) + pool[start : start + size - shared]
        candidates = [
            Candidate(
                name, in_flight=rng.randrange(9), cache_blocks=CACHE_BLOCKS, block_size=CACHE_BLOCK_SIZE
            )
            for name in names
        ]
        requests.append((candidates, RoutingContext(model="bench-model", prompt=prompt)))
    return requests


@dataclass(frozen=True)
class Plan:
    decisions: int
    headline_decisions: int
    warmup: int
    replays: int
    overhead: tuple[float, float]


def replay(
    requests: list[Request], warmup: int, block_chars: int, overhead: tuple[float, float]
) -> tuple[list[float], list[float], dict[str, int]]:
    """One run from a fresh policy: wall and CPU microseconds per timed decision, and the branches."""
    policy = PrefixAffinity(PrefixAffinityConfig(block_chars=block_chars))
    for candidates, context in requests[:warmup]:  # fill the index to steady state, build the ring
        policy.record(policy.rank(candidates, context).order[0].name, context)
    walls: list[float] = []
    cpus: list[float] = []
    branches: dict[str, int] = {}
    wall_overhead, cpu_overhead = overhead
    gc.collect()
    for candidates, context in requests[warmup:]:
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        ranking = policy.rank(candidates, context)
        policy.record(ranking.order[0].name, context)
        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        walls.append(max(0.0, w1 - w0 - wall_overhead) / 1000)
        cpus.append(max(0.0, c1 - c0 - cpu_overhead) / 1000)
        branches[ranking.branch] = branches.get(ranking.branch, 0) + 1
    return walls, cpus, branches


@dataclass(frozen=True)
class Config:
    prompt_kb: int
    backends: int
    block_chars: int
    decisions: int

    def requests(self, warmup: int) -> list[Request]:
        """The same requests every time (seeded), so every replay does the same work."""
        return workload(
            self.prompt_kb, self.backends, warmup + self.decisions, self.prompt_kb * 100 + self.backends
        )


Run = tuple[list[float], list[float], dict[str, int], list[float]]


def run_config(config: Config, plan: Plan) -> Run:
    requests = config.requests(plan.warmup)
    walls, cpus, branches = replay(requests, plan.warmup, config.block_chars, plan.overhead)
    hasher = PrefixHasher(config.block_chars)
    hashes = [_timed_hash(hasher, context, plan.overhead[1]) for _, context in requests[-300:]]
    return walls, cpus, branches, hashes


def summarize(config: Config, runs: list[Run]) -> Measurement:
    """Each decision's minimum over the replays: its cost with the least interference."""
    assert all(run[2] == runs[0][2] for run in runs), "replays must make the same decisions"

    def best(samples_per_run: list[list[float]]) -> list[float]:
        return [min(samples) for samples in zip(*samples_per_run, strict=True)]

    return Measurement(
        prompt_kb=config.prompt_kb,
        backends=config.backends,
        block_chars=config.block_chars,
        decisions=config.decisions,
        wall_us=percentiles(best([run[0] for run in runs])),
        cpu_us=percentiles(best([run[1] for run in runs])),
        cpu_us_single_run=percentiles(runs[0][1]),
        wall_us_single_run=percentiles(runs[0][0]),
        hash_cpu_us_p50=percentiles(best([run[3] for run in runs]))["p50"],
        branches=dict(sorted(runs[0][2].items())),
    )


def _timed_hash(hasher: PrefixHasher, context: RoutingContext, cpu_overhead: float) -> float:
    start = time.thread_time_ns()
    hasher.block_hashes(context.model, context.prompt)
    return max(0.0, time.thread_time_ns() - start - cpu_overhead) / 1000


def contention_probe() -> dict[str, float]:
    """A fixed pure-Python loop timed 30 times: median / min shows how much other load slows this run."""
    samples = []
    for _ in range(30):
        start = time.perf_counter_ns()
        total = 0
        for value in range(20_000):
            total += value
        samples.append((time.perf_counter_ns() - start) / 1000)
    return {
        "min_us": round(min(samples), 1),
        "median_us": round(statistics.median(samples), 1),
        "slowdown": round(statistics.median(samples) / min(samples), 2),
    }


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def plot(results: list[Measurement], sweep: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (grid_axes, block_axes) = plt.subplots(1, 2, figsize=(12, 4.6))
    for backends, color in zip(BACKENDS, ("tab:green", "tab:blue", "tab:red"), strict=True):
        rows = sorted((r for r in results if r.backends == backends), key=lambda r: r.prompt_kb)
        sizes = [r.prompt_kb for r in rows]
        grid_axes.plot(
            sizes, [r.cpu_us["p50"] for r in rows], "o-", color=color, label=f"{backends} backends p50"
        )
        grid_axes.plot(sizes, [r.cpu_us["p99"] for r in rows], "x--", color=color, alpha=0.6, label="p99")
    grid_axes.axhline(TARGET_US, color="gray", linestyle=":", label=f"target {TARGET_US:.0f} us")
    grid_axes.set_xscale("log", base=2)
    grid_axes.set_xticks(PROMPT_KB, [f"{kb} KB" for kb in PROMPT_KB])
    grid_axes.set_xlabel("prompt size")
    grid_axes.set_ylabel("CPU us per decision (rank + record)")
    grid_axes.set_title(f"prefix_affinity, block_chars={DEFAULT_BLOCK_CHARS}")
    grid_axes.legend(fontsize=7, ncol=2)
    grid_axes.grid(alpha=0.3)
    labels = [str(r.block_chars) for r in sweep]
    block_axes.bar(labels, [r.cpu_us["p50"] for r in sweep], color="tab:blue", label="decision p50")
    block_axes.bar(labels, [r.hash_cpu_us_p50 for r in sweep], color="tab:orange", label="of which hashing")
    block_axes.axhline(TARGET_US, color="gray", linestyle=":")
    block_axes.set_xlabel("block_chars")
    block_axes.set_ylabel("CPU us per decision")
    block_axes.set_title("16 backends, 8 KB prompts")
    block_axes.legend(fontsize=8)
    block_axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer decisions and repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    overhead = timer_overhead_ns()
    if args.quick:
        plan = Plan(decisions=300, headline_decisions=600, warmup=800, replays=2, overhead=overhead)
    else:
        plan = Plan(decisions=1500, headline_decisions=4000, warmup=3000, replays=5, overhead=overhead)
    info = machine()
    configs = [
        Config(
            kb,
            backends,
            DEFAULT_BLOCK_CHARS,
            plan.headline_decisions if (backends, kb) == (16, 8) else plan.decisions,
        )
        for backends in BACKENDS
        for kb in PROMPT_KB
    ]
    configs += [
        Config(8, 16, block_chars, plan.decisions)
        for block_chars in BLOCK_SWEEP
        if block_chars != DEFAULT_BLOCK_CHARS
    ]
    # Rounds: every configuration once per round, so each one's replays are spread over the whole run
    # (this machine's speed drifts by up to 2x over minutes).
    runs: dict[Config, list[Run]] = {config: [] for config in configs}
    probes = []
    for round_number in range(plan.replays):
        probes.append(contention_probe())
        for config in configs:
            runs[config].append(run_config(config, plan))
        print(f"round {round_number + 1}/{plan.replays} done, probe {probes[-1]}", flush=True)
    probes.append(contention_probe())
    info["contention_probes"] = probes
    measured = {config: summarize(config, config_runs) for config, config_runs in runs.items()}
    results = [measured[config] for config in configs if config.block_chars == DEFAULT_BLOCK_CHARS]
    for result in results:
        print(
            f"{result.backends:>2} backends {result.prompt_kb:>2} KB: cpu p50 {result.cpu_us['p50']:6.1f} us"
            f" p99 {result.cpu_us['p99']:6.1f} | wall p50 {result.wall_us['p50']:6.1f}"
            f" p99 {result.wall_us['p99']:6.1f} | hash p50 {result.hash_cpu_us_p50:5.1f} | {result.branches}"
        )
    sweep = sorted(
        (m for m in measured.values() if (m.backends, m.prompt_kb) == (16, 8)), key=lambda m: m.block_chars
    )
    for result in sweep:
        print(
            f"block_chars {result.block_chars:>3}: cpu p50 {result.cpu_us['p50']:6.1f} us,"
            f" hash {result.hash_cpu_us_p50}"
        )
    headline = next(r for r in results if (r.backends, r.prompt_kb) == (16, 8))
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "benchmark": "prefix_affinity rank() + record() per decision",
        "machine": info,
        "settings": {
            "tenants": TENANTS,
            "cold_share": COLD_SHARE,
            "shared_prefix_share": 0.75,
            "in_flight_per_backend": "uniform 0..8, redrawn per request",
            "backend_cache": f"{CACHE_BLOCKS} blocks x {CACHE_BLOCK_SIZE} tokens",
            "warmup_decisions": plan.warmup,
            "decisions_per_config": plan.decisions,
            "decisions_headline": plan.headline_decisions,
            "replays": plan.replays,
            "statistic": "per decision, the minimum over replays (spread over the run in rounds) of the same"
            " decision from the same state; *_single_run fields are the first replay's raw times",
            "block_chars": DEFAULT_BLOCK_CHARS,
            "timer_overhead_ns_subtracted": {"wall": overhead[0], "cpu": overhead[1]},
        },
        "target_us": TARGET_US,
        "headline": {
            "backends": 16,
            "prompt_kb": 8,
            "cpu_us": headline.cpu_us,
            "wall_us": headline.wall_us,
            "meets_target_p50": headline.cpu_us["p50"] < TARGET_US,
        },
        "grid": [r.__dict__ for r in results],
        "block_sweep_16_backends_8kb": [r.__dict__ for r in sweep],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing_micro.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, sweep, args.out / "routing_micro.png")
    print(f"headline 16 backends, 8 KB: cpu {headline.cpu_us} wall {headline.wall_us}")
    print(f"wrote {args.out / 'routing_micro.json'} and routing_micro.png")


if __name__ == "__main__":
    main()
