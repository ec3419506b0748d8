"""The kill test: one engine dies mid-run under ``prefix_affinity``; only its share of prefixes should move.

A fresh fleet for the regime, a gateway with the policy, a warm-up, then one run of ``before_s + after_s``
seconds of traffic; at ``before_s`` one engine is killed with ``POST /sim/faults {"exit": true}``: by
``victim_rule="hottest"`` the one serving most of the hottest tenant's requests (tenant 0, a quarter of the
traffic under Zipf 1.1: the hardest case for the survivors' load bound), ``"other"`` the one serving
least of them (a typical engine). The engines'
counters are sampled throughout for the hit rate per window; the ``x-llm-gateway-backend`` header of every
request gives each tenant's engine before and after.
Streams that were running on the killed engine fail (the gateway cannot fail over after the first byte);
new requests fail over to the survivors.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from benchmarks.affinity.analysis import balance, hit_rate_windows, moves_across_kill
from benchmarks.affinity.matrix import Log, open_session, policy_target, regime_fleet, stderr_log
from benchmarks.affinity.observe import StateSampler
from benchmarks.affinity.runner import request_count, warm_up
from benchmarks.affinity.settings import BACKEND_HEADER, BenchSettings
from benchmarks.loadgen import ArrivalProcess, RequestRecord


async def run_kill(settings: BenchSettings, victim_rule: Literal["hottest", "other"], log_dir: Path,
                   log: Log = stderr_log) -> dict[str, Any]:
    kill = settings.kill
    assert kill is not None
    regime = settings.regime(kill.regime)
    rate = kill.rate if kill.rate is not None else regime.rates[0]
    hottest = settings.workload.tenant_name(0)
    started = time.monotonic()
    logs = log_dir / f"kill-{victim_rule}"
    async with open_session() as session, regime_fleet(settings, regime, logs) as fleet, \
            policy_target(settings, fleet, session, kill.policy, logs) as target:
        await warm_up(settings, target, rate)
        count = request_count(rate, kill.before_s + kill.after_s, settings.timing.min_requests)
        specs = list(settings.workload.generate(count, settings.seed + 500))
        sampler = StateSampler(session, fleet.urls, settings.timing.sample_interval_s)
        hot_engines: Counter[str] = Counter()

        def seen(record: RequestRecord) -> None:
            engine = record.headers.get(BACKEND_HEADER)
            if record.success and record.tenant == hottest and engine:
                hot_engines[engine] += 1

        sampler.start()
        arrival = ArrivalProcess(rate=rate, seed=settings.seed + 500)
        sending = asyncio.create_task(target.send(settings, specs, arrival, on_progress=seen))
        await asyncio.sleep(kill.before_s)
        ranked = sorted(fleet.names, key=lambda name: (-hot_engines[name], name))
        victim = ranked[0] if victim_rule == "hottest" else ranked[-1]
        kill_at = sampler.now()
        await fleet.kill(session, victim)
        log(f"kill test: killed {victim} at {kill_at:.1f} s ({hot_engines[victim]} of {hottest}'s requests)")
        result = await sending
        samples = await sampler.stop()
    # The sampler and the load generator start within a few ms of each other: one clock for both.
    moves, baseline = moves_across_kill(result.records, BACKEND_HEADER, kill_at, victim, kill.settle_s)
    windows = hit_rate_windows(samples, kill.window_s)
    before = [w["hit_rate"] for w in windows if w["t_end_s"] <= kill_at and w["hit_rate"] is not None]
    after = [w["hit_rate"] for w in windows if w["t_start_s"] >= kill_at + kill.window_s
             and w["hit_rate"] is not None]
    failures = [r for r in result.records if not r.success]
    aggregate = result.aggregate()
    log(f"kill test: tenants on {victim} moved "
        f"{moves['tenants_on_killed_moved']}/{moves['tenants_on_killed']}, "
        f"others moved {moves['tenants_on_survivors_moved']}/{moves['tenants_on_survivors']}, "
        f"{len(failures)} requests failed")
    return {
        "regime": regime.name, "policy": kill.policy, "rate": rate, "requests": count,
        "killed": victim, "victim_rule": victim_rule,
        "killed_at_s": kill_at, "hottest_tenant": hottest, "engines": fleet.names,
        "window_s": kill.window_s, "tenant_moves": moves, "baseline_moves_without_kill": baseline,
        "hit_rate_windows": windows,
        "hit_rate_before_mean": sum(before) / len(before) if before else None,
        "hit_rate_after_mean": sum(after) / len(after) if after else None,
        "failed": len(failures),
        "failed_after_kill": sum(1 for r in failures if r.start >= kill_at),
        "failure_reasons": aggregate["failure_reasons"],
        "ttft_ms": aggregate["ttft_ms"], "request_throughput": aggregate["request_throughput"],
        "balance_after": balance([s for s in samples if s.t >= kill_at + kill.window_s],
                                 [name for name in fleet.names if name != victim]),
        "requests_timeline": [{"start_s": r.start, "tenant": r.tenant, "success": r.success,
                               "engine": r.headers.get(BACKEND_HEADER)} for r in result.records],
        "wall_s": time.monotonic() - started,
    }
