"""The sim matrix: for each cache regime a fresh fleet of sims sized for it; for each policy the caches
emptied (``POST /sim/reset_prefix_cache``) and a fresh gateway process started with that policy (the
oracle goes straight to the engines), a warm-up, then one measured run per rate in ascending order (each
run also warms the next, as a ``vllm bench serve`` sweep against one server would). Every policy gets
the same requests at a given rate (same seed)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.affinity.fleet import GatewayProcess, SimFleet, gateway_config
from benchmarks.affinity.oracle import pin_tenants
from benchmarks.affinity.runner import Target, measure, warm_up
from benchmarks.affinity.settings import ORACLE, BenchSettings, Regime

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(f"[affinity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=30))


@contextlib.asynccontextmanager
async def regime_fleet(settings: BenchSettings, regime: Regime, log_dir: Path) -> AsyncIterator[SimFleet]:
    blocks = regime.num_blocks(settings.working_set_blocks, settings.geometry.engines)
    fleet = SimFleet(settings.geometry.engines, settings.geometry.model, settings.geometry.sim_args(blocks),
                     log_dir / regime.name)
    async with fleet:
        yield fleet


@contextlib.asynccontextmanager
async def policy_target(settings: BenchSettings, fleet: SimFleet, session: aiohttp.ClientSession, policy: str,
                        log_dir: Path) -> AsyncIterator[Target]:
    """Empty caches, then a target for ``policy``: a fresh gateway, or the oracle's pins."""
    await fleet.reset_prefix_caches(session)
    if policy == ORACLE:
        yield Target(fleet, session, pins=pin_tenants(settings.workload, fleet.names))
        return
    config = gateway_config(fleet.urls, settings.geometry.model, policy, settings.gateway_overrides)
    async with GatewayProcess(config, log_dir, f"gateway-{policy}") as gateway:
        yield Target(fleet, session, gateway=gateway)


async def run_regime(settings: BenchSettings, regime: Regime, log_dir: Path, log: Log = stderr_log
                     ) -> dict[str, Any]:
    started = time.monotonic()
    blocks = regime.num_blocks(settings.working_set_blocks, settings.geometry.engines)
    runs: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    async with open_session() as session, regime_fleet(settings, regime, log_dir) as fleet:
        for policy in settings.policies:
            async with policy_target(settings, fleet, session, policy, log_dir / regime.name) as target:
                warmups[policy] = await warm_up(settings, target, regime.rates[0])
                for index, rate in enumerate(regime.rates):
                    run = await measure(settings, target, rate, settings.seed + index)
                    runs.append({"regime": regime.name, "policy": policy, **run})
                    log(summary(regime.name, policy, run))
    return {"name": regime.name, "ratio": regime.ratio, "scope": regime.scope,
            "num_blocks_per_engine": blocks,
            "working_set_blocks": settings.working_set_blocks, "rates": list(regime.rates),
            "warmups": warmups, "runs": runs, "wall_s": time.monotonic() - started}


def summary(regime: str, policy: str, run: dict[str, Any]) -> str:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    ttft = run["ttft_ms"]
    return (f"{regime} {policy:<15} rate {run['rate']:>5g}: hit {num(run['hit_rate'], '.3f')}, "
            f"TTFT p50/p90/p99 {num(ttft['p50'], '.0f')}/{num(ttft['p90'], '.0f')}/"
            f"{num(ttft['p99'], '.0f')} ms, "
            f"{run['request_throughput']:.2f} req/s, max/mean {num(run['balance']['max_over_mean'], '.2f')}, "
            f"failed {run['failed']}, gw cpu {num(run['cpu_share'].get('gateway'), '.2f')}, "
            f"load {run['loadavg_1m'][1]:.1f}")
