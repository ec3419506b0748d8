"""Arithmetic and plot of the load generator vs ``vllm bench serve`` cross-check
(``benchmarks/compare_vllm_bench.py`` runs it and explains the method and the tolerance): figures of
both clients compared with a tolerance and the repeat noise, release schedules against the seed's,
per-request TTFT pairs, and a PNG of the relative differences."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen.arrivals import arrival_offsets

GATED = ("ttft_mean", "ttft_p50", "tpot_mean", "tpot_p50", "itl_mean", "itl_p50", "e2el_mean", "e2el_p50",
         "request_throughput", "output_throughput", "total_token_throughput")
REL_TOL, ABS_TOL_MS = 0.10, 2.0


def spread(values: list[float]) -> float | None:
    """Run-to-run spread of one tool's repeats: (max - min) / mean."""
    mean = statistics.fmean(values)
    return (max(values) - min(values)) / mean if len(values) > 1 and mean else None


def compare(vllm_runs: list[dict[str, Any]], loadgen_runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in vllm_runs[0]["figures"]:
        ours = [r["figures"][name] for r in loadgen_runs if r["figures"][name] is not None]
        theirs = [r["figures"][name] for r in vllm_runs if r["figures"][name] is not None]
        if not ours or not theirs:
            continue
        reference, measured = statistics.fmean(theirs), statistics.fmean(ours)
        latency = not name.endswith("throughput")
        tolerance = max(REL_TOL * abs(reference), ABS_TOL_MS if latency else 0.0)
        table[name] = {
            "vllm_bench": reference, "loadgen": measured, "diff": measured - reference,
            "rel_diff": (measured - reference) / reference if reference else None,
            "tolerance": tolerance, "gated": name in GATED,
            "within": abs(measured - reference) <= tolerance,
            "vllm_bench_runs": theirs, "loadgen_runs": ours,
            "repeat_spread_rel": {"vllm_bench": spread(theirs), "loadgen": spread(ours)},
        }
        # The same tool's run-to-run spread: a cross-tool gap below it cannot be told from noise.
        noise = max(max(v) - min(v) for v in (theirs, ours))
        table[name]["noise"] = noise
        table[name]["within_noise"] = abs(measured - reference) <= max(tolerance, noise)
    return table


def schedule_gap_ms(scenario: dict[str, Any], runs: list[dict[str, Any]],
                     seed: int) -> dict[str, float] | None:
    """How far a client's request starts were from the schedule of its seed: p50/p99/max in ms.
    The tail is the shared box's scheduling stalls (an idle asyncio loop here oversleeps by up to
    about 10 ms; under the load of a run both clients' loops stall for tens of ms at times)."""
    if scenario["max_concurrency"] is not None or math.isinf(scenario["rate"]):
        return None
    n = len(runs[0]["start_offsets_s"])
    expected = arrival_offsets(n, scenario["rate"], 1.0, seed)
    expected = [e - expected[0] for e in expected]
    gaps = [1000 * abs(s - e) for run in runs for s, e in zip(run["start_offsets_s"], expected, strict=True)]
    return {"p50": statistics.median(gaps), "p99": float(np.percentile(gaps, 99)), "max": max(gaps)}


def paired_ttft(vllm_run: dict[str, Any], loadgen_run: dict[str, Any]) -> dict[str, Any]:
    """Request i of both clients: the same prompt and length, released at independent times."""
    diffs = sorted(1000 * (ours - theirs) for ours, theirs in zip(loadgen_run["ttfts_s"], vllm_run["ttfts_s"],
                                                                    strict=True) if ours and theirs)
    return {"pairs": len(diffs), "median_ms": statistics.median(diffs),
            "mean_ms": statistics.fmean(diffs), "median_abs_ms": statistics.median(abs(d) for d in diffs)}


def _percent_of(value: float, reference: float) -> float:
    return 100 * value / abs(reference) if reference else 0.0


def plot(document: dict[str, Any], out: Path) -> None:
    """Per scenario: loadgen vs vllm bench, relative difference of each gated figure, with the
    tolerance band and the same-tool repeat noise (relative to vllm bench) as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = document["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(7 * len(scenarios), 5), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        rows = [(n, scenario["comparison"][n]) for n in GATED if n in scenario["comparison"]]
        ys = list(range(len(rows)))
        diffs = [100 * (row["rel_diff"] or 0.0) for _, row in rows]
        noise = [_percent_of(row["noise"], row["vllm_bench"]) for _, row in rows]
        band = [_percent_of(row["tolerance"], row["vllm_bench"]) for _, row in rows]
        colors = ["tab:green" if row["within"] else "tab:orange" for _, row in rows]
        ax.barh(ys, diffs, xerr=noise, color=colors, capsize=3, alpha=0.85)
        for y, width in zip(ys, band, strict=True):
            ax.fill_betweenx([y - 0.45, y + 0.45], -width, width, color="grey", alpha=0.2, linewidth=0)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(ys, [name for name, _ in rows], fontsize="small")
        ax.invert_yaxis()
        ax.set_xlabel("loadgen vs vllm bench (%); grey: tolerance; whiskers: same-tool repeat spread")
        loop = (f"closed loop, concurrency {scenario['max_concurrency']}" if scenario["max_concurrency"]
                else f"Poisson {scenario['rate']} req/s")
        ax.set_title(f"{scenario['name']} ({loop})", fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
    loads = [run["before"]["loadavg"][0] for scenario in scenarios for run in scenario["runs"]]
    fig.suptitle(f"load generator vs vllm bench serve: same vLLM CPU server, prompts, seed; 1-min load "
                 f"{min(loads):.1f}-{max(loads):.1f} at run starts, {document['machine']['cpu_count']} CPUs",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def replot(path: Path) -> None:
    plot(json.loads(path.read_text()), path.with_suffix(".png"))
