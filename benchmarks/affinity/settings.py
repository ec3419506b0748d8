"""What the affinity benchmark runs: the cache regimes, the fleet's geometry, the workload and the timing
of each run, with the full and ``--quick`` matrices.

A regime sizes every engine's KV cache from the workload's working set (``tenants * prefix tokens``, in
blocks): ``ratio`` of one engine's cache (``scope="engine"``) or of the whole fleet's (``scope="fleet"``).
The working set counts the shared prefixes only; running requests also hold blocks (suffix, output and
session history), so the cache space really left for prefixes is somewhat smaller than the ratio says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from benchmarks.workloads import SharedPrefixWorkload

ORACLE = "oracle"
GATEWAY_POLICIES = ("round_robin", "least_loaded", "prefix_affinity")
POLICIES = (*GATEWAY_POLICIES, ORACLE)
BACKEND_HEADER = "x-llm-gateway-backend"
# Tokens a shared-prefix request has on the sim beyond its words, over completions (BOS + "User:" ...).
TEMPLATE_TOKENS = 9


@dataclass(frozen=True)
class Regime:
    name: str
    ratio: float
    scope: Literal["engine", "fleet"]
    # Offered request rates (req/s), ascending: below, around and past round robin's saturation.
    rates: tuple[float, ...]

    def num_blocks(self, working_set_blocks: int, engines: int) -> int:
        per_engine = working_set_blocks / self.ratio
        if self.scope == "fleet":
            per_engine /= engines
        return math.ceil(per_engine)


@dataclass(frozen=True)
class FleetGeometry:
    engines: int = 4
    profile: str = "gpu-8b"
    block_size: int = 16
    model: str = "bench-8b"
    # None: the profile's own (gpu-8b: 256 sequences, 8,192 context).
    max_num_seqs: int | None = None
    max_model_len: int | None = None

    def sim_args(self, num_blocks: int) -> list[str]:
        args = ["--profile", self.profile, "--block-size", str(self.block_size),
                "--num-blocks", str(num_blocks)]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        return args


@dataclass(frozen=True)
class Timing:
    # Warm-up: this many seconds of traffic at the regime's lowest rate, once per (regime, policy).
    warmup_s: float = 6.0
    # Each measured run sends rate * measure_s requests (the run then lasts until the last one ends).
    measure_s: float = 14.0
    sample_interval_s: float = 0.1
    min_requests: int = 20


@dataclass(frozen=True)
class KillSettings:
    regime: str = "0.7x-fleet"
    policy: str = "prefix_affinity"
    rate: float | None = None  # None: the regime's lowest rate (the fleet loses a quarter of its capacity)
    # 60 s on each side: the tenant-move comparison then has 27-31 tenants per period with a few requests
    # in each (13-17 at 20 s, where one tenant more or less moved a run's result by 6-8 points).
    before_s: float = 60.0
    after_s: float = 60.0
    window_s: float = 2.0
    # Requests started this soon after the kill are left out of the tenant-move comparison.
    settle_s: float = 2.0
    # One kill run per entry, each on a fresh fleet. Which engine dies: "hottest" serves the most of
    # tenant 0's requests (a quarter of all traffic moves: the stress case); "other" the fewest of them.
    victims: tuple[Literal["hottest", "other"], ...] = ("hottest", "other")


@dataclass(frozen=True)
class BenchSettings:
    regimes: tuple[Regime, ...]
    geometry: FleetGeometry = FleetGeometry()
    workload: SharedPrefixWorkload = field(default_factory=SharedPrefixWorkload)
    timing: Timing = Timing()
    kill: KillSettings | None = KillSettings()
    policies: tuple[str, ...] = POLICIES
    api: Literal["completions", "chat"] = "completions"
    seed: int = 1
    # Gateway config sections merged into every gateway's YAML (routing options stay the defaults).
    gateway_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def working_set_blocks(self) -> int:
        return self.workload.tenants * math.ceil(self.workload.prefix_words / self.geometry.block_size)

    def regime(self, name: str) -> Regime:
        for regime in self.regimes:
            if regime.name == name:
                return regime
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        geometry = asdict(self.geometry)
        return {
            "geometry": geometry,
            "regimes": [{**asdict(r), "num_blocks_per_engine": r.num_blocks(self.working_set_blocks,
                                                                               self.geometry.engines),
                         "working_set_blocks": self.working_set_blocks} for r in self.regimes],
            "workload": self.workload.settings(),
            "timing": asdict(self.timing),
            "kill": asdict(self.kill) if self.kill else None,
            "policies": list(self.policies),
            "api": self.api,
            "seed": self.seed,
            "gateway_overrides": self.gateway_overrides,
        }


# Rates from `python -m benchmarks.affinity probe` (round robin alone, 8-12 s per rate) on the shared 2-core
# dev box: round robin's TTFT p90 passed 0.5 s around 44 req/s at 0.7x (1.1 s at 52), between 20 and 30 req/s
# at 1.5x (2.6 s at 30), and around 60-72 req/s at 0.5x (0.5 s at 60, 3 s at 72). Higher rates are out of
# reach here: the benchmark's own processes (client, gateway, 4 sims) need about 1.3 cores at 72 req/s.
FULL_REGIMES = (
    Regime("0.5x-engine", 0.5, "engine", (24.0, 48.0, 72.0)),
    Regime("0.7x-fleet", 0.7, "fleet", (20.0, 40.0, 52.0)),
    Regime("1.5x-fleet", 1.5, "fleet", (10.0, 20.0, 30.0)),
)


def full_settings() -> BenchSettings:
    return BenchSettings(regimes=FULL_REGIMES)


def quick_settings() -> BenchSettings:
    """One rate per regime (around saturation), shorter runs, a shorter kill test."""
    regimes = tuple(replace(r, rates=(r.rates[1],)) for r in FULL_REGIMES)
    return BenchSettings(regimes=regimes, timing=Timing(warmup_s=4.0, measure_s=10.0),
                         kill=KillSettings(before_s=12.0, after_s=12.0, victims=("hottest",)))
