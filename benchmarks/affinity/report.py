"""The results document (``benchmarks/results/affinity.json``): settings, machine, per-run aggregates of
every regime, the kill test and the target checks."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from backends.sim.profiles import PROFILES
from benchmarks.affinity.settings import BenchSettings
from benchmarks.affinity.targets import check_targets
from benchmarks.loadgen.results import git_state, machine_info

SCHEMA = "llm-gateway-affinity/1"
PROFILE_NOTE = ("gpu-8b: the sim's 'realistic' profile, loosely Llama-3/3.1-8B in BF16 under vLLM on one "
                "H100 "
                "(prefill ~16k tokens/s, decode step ~6.5 ms + 0.08 ms per sequence; public write-ups, not "
                "measured here; see backends/sim/profiles.py)")
METHOD = [
    "Fresh sim fleet per regime, sized from the working set (tenants x prefix tokens / block size).",
    "Per policy: prefix caches emptied (POST /sim/reset_prefix_cache), a fresh gateway process with that "
    "policy and its default options (the oracle bypasses the gateway), a warm-up at the regime's lowest rate "
    "with another seed, then one measured run per rate in ascending order (each warms the next).",
    "Same requests for every policy at a given rate (same seed); Poisson arrivals normalized to N/rate.",
    "Hit rate: delta of vllm:prefix_cache_hits_total over delta of vllm:prefix_cache_queries_total, summed "
    "over the engines, read from each engine's /metrics before and after the run.",
    "In-flight per engine: running + waiting from GET /sim/state every sample interval.",
    "TTFT/throughput: benchmarks.loadgen (vllm bench serve's definitions); throughput = completed / (first "
    "release to last completion).",
]


def build_document(settings: BenchSettings, regimes: Sequence[Mapping[str, Any]],
                   kills: Sequence[Mapping[str, Any]], started: float, ended: float,
                   load_start: Sequence[float]) -> dict[str, Any]:
    runs = [run for regime in regimes for run in regime["runs"]]
    machine = machine_info()
    machine["loadavg_start"] = list(load_start)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["note"] = "2 cores shared with other users; every process of the benchmark runs on them"
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "settings": {**settings.to_json(), "profile_note": PROFILE_NOTE,
                     "sim_engine_config": repr(PROFILES[settings.geometry.profile]),
                     "method": METHOD},
        "machine": machine,
        "git": git_state(),
        "wall_s": ended - started,
        "targets": check_targets(runs, [dict(kill) for kill in kills]),
        "regimes": list(regimes),
        "kills": [dict(kill) for kill in kills],
    }
