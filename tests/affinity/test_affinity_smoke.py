"""A smoke run of the affinity benchmark harness on a tiny fleet (2 sim engines, ``fast`` profile, a few
tenants, ~20 requests per run): real sims, real gateway processes, the oracle and the kill test. It checks
the results document's shape, that the oracle pins every tenant to one engine, and that the killed engine
was really gone; no figure is asserted (timing claims belong to the benchmark's own output)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.affinity.__main__ import recheck_targets, run_benchmark
from benchmarks.affinity.oracle import pin_tenants
from benchmarks.affinity.settings import BenchSettings, FleetGeometry, KillSettings, Regime, Timing
from benchmarks.workloads import SharedPrefixWorkload

WORKLOAD = SharedPrefixWorkload(tenants=4, prefix_words=128, suffix_words=8, output_tokens=8, max_turns=2)
POLICIES = ("round_robin", "prefix_affinity", "oracle")


def tiny_settings() -> BenchSettings:
    return BenchSettings(
        regimes=(Regime("0.7x-fleet", 0.7, "fleet", (40.0,)),),
        geometry=FleetGeometry(engines=2, profile="fast", model="sim-affinity", max_model_len=256),
        workload=WORKLOAD,
        timing=Timing(warmup_s=0.25, measure_s=0.5, sample_interval_s=0.05, min_requests=20),
        kill=KillSettings(regime="0.7x-fleet", rate=40.0, before_s=0.6, after_s=0.6, window_s=0.3,
                          settle_s=0.1, victims=("hottest",)),
        policies=POLICIES,
    )


def test_oracle_pins_balance_zipf_weight() -> None:
    pins = pin_tenants(SharedPrefixWorkload(tenants=64), ["a", "b", "c", "d"])
    assert len(pins) == 64 and set(pins.values()) == {"a", "b", "c", "d"}
    weights = SharedPrefixWorkload(tenants=64).tenant_weights()
    share = {engine: sum(w for k, w in enumerate(weights) if pins[f"tenant-{k:03d}"] == engine)
             for engine in "abcd"}
    assert max(share.values()) / (sum(share.values()) / 4) < 1.05


async def test_harness_writes_every_field_and_the_oracle_pins_tenants(tmp_path: Path) -> None:
    out = tmp_path / "affinity.json"
    await run_benchmark(tiny_settings(), out, tmp_path / "logs")
    document = json.loads(out.read_text())
    assert document["schema"] == "llm-gateway-affinity/1"
    assert {"settings", "machine", "git", "wall_s", "targets", "regimes", "kills"} <= set(document)
    assert document["machine"]["loadavg_start"] and document["settings"]["geometry"]["engines"] == 2
    (regime,) = document["regimes"]
    # Working set 4 tenants x 8 blocks = 32 blocks = 0.7 x (2 engines x 23 blocks).
    assert (regime["working_set_blocks"], regime["num_blocks_per_engine"]) == (32, 23)
    runs = {run["policy"]: run for run in regime["runs"]}
    assert set(runs) == set(POLICIES)
    for policy, run in runs.items():
        assert run["failed"] == 0, (policy, run["failure_reasons"])
        assert run["completed"] == run["requests"] >= 20
        assert 0.0 <= run["hit_rate"] <= 1.0 and run["queried_tokens"] > 0
        assert set(run["ttft_ms"]) == {"mean", "p50", "p90", "p99"}
        assert run["request_throughput"] > 0 and run["output_throughput"] > 0
        assert run["balance"]["samples"] > 0 and set(run["balance"]["time_avg_in_flight"]) == {
            "engine-0", "engine-1"}
        assert sum(run["requests_per_engine"].values()) == run["completed"]
        assert set(run["prompt_tokens_check"]["extra_tokens_seen"]) == {"9"}  # BOS + transcript markers
    assert runs["oracle"]["tenant_pinned_share"] == 1.0
    assert "gateway" in runs["prefix_affinity"]["cpu_share"] and "gateway" not in runs["oracle"]["cpu_share"]
    assert sum(runs["prefix_affinity"]["policy_decisions"].values()) == runs["prefix_affinity"]["requests"]
    assert set(runs["round_robin"]["policy_decisions"]) == {"round_robin"}

    (kill,) = document["kills"]
    assert kill["killed"] in ("engine-0", "engine-1") and kill["hit_rate_windows"]
    after = [row for row in kill["requests_timeline"] if row["start_s"] > kill["killed_at_s"] + 0.2]
    assert after and all(row["engine"] != kill["killed"] for row in after if row["success"])
    targets = {target["target"]: target for target in document["targets"]}
    assert len(targets) == 7 and all("met" in target for target in targets.values())
    # Re-checking from the stored timelines reproduces what the run measured.
    rechecked = recheck_targets(json.loads(json.dumps(document)))
    assert rechecked["kills"][0]["tenant_moves"] == kill["tenant_moves"]
    assert rechecked["targets"] == document["targets"] and rechecked["targets_rechecked"]["git"]
    for png in ("affinity.png", "affinity_kill.png"):
        assert (tmp_path / png).stat().st_size > 0
