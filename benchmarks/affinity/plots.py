"""PNGs of the affinity results (matplotlib, Agg): ``affinity.png`` (per regime: hit rate, TTFT p90,
throughput and max/mean in-flight against the offered rate, one line per policy) and ``affinity_kill.png``
(hit rate per window and requests per engine over time, the kill marked)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_PANELS = (
    ("hit_rate", "engine prefix hit rate", False),
    ("ttft_p90", "TTFT p90 (ms)", True),
    ("request_throughput", "completed req/s", False),
    ("max_over_mean", "max/mean in-flight", False),
)
_STYLE = {"round_robin": "tab:red", "least_loaded": "tab:orange", "prefix_affinity": "tab:blue",
          "oracle": "tab:green"}


def _value(run: Mapping[str, Any], key: str) -> float:
    value: Any
    if key == "ttft_p90":
        value = run["ttft_ms"]["p90"]
    elif key == "max_over_mean":
        value = run["balance"]["max_over_mean"]
    else:
        value = run[key]
    return math.nan if value is None else float(value)


def plot_matrix(document: Mapping[str, Any], out_path: Path) -> Path:
    regimes = document["regimes"]
    fig, axes = plt.subplots(len(regimes), len(_PANELS), figsize=(4.4 * len(_PANELS), 3.4 * len(regimes)),
                             squeeze=False)
    for row, regime in enumerate(regimes):
        runs = regime["runs"]
        policies = list(dict.fromkeys(run["policy"] for run in runs))
        for col, (key, label, log_scale) in enumerate(_PANELS):
            ax = axes[row][col]
            for policy in policies:
                mine = sorted((run for run in runs if run["policy"] == policy), key=lambda run: run["rate"])
                ax.plot([run["rate"] for run in mine], [_value(run, key) for run in mine], marker="o",
                        label=policy, color=_STYLE.get(policy))
            if key == "request_throughput" and runs:
                rates = sorted({run["rate"] for run in runs})
                ax.plot(rates, rates, linestyle=":", color="grey", label="offered")
            if key == "max_over_mean":
                ax.axhline(1.25, linestyle="--", color="grey", linewidth=0.8)
            ax.set(xlabel="offered rate (req/s)", ylabel=label,
                   title=f"{regime['name']} ({regime['num_blocks_per_engine']} blocks/engine)")
            if log_scale:
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            if row == 0 and col == 0:
                ax.legend(fontsize="small")
    geometry = document["settings"]["geometry"]
    fig.suptitle(f"Cache-affinity routing: {geometry['engines']} sim engines, profile {geometry['profile']}, "
                 f"block {geometry['block_size']}; shared-prefix workload "
                 f"({document['settings']['workload']['tenants']} tenants)", fontsize="medium")
    fig.tight_layout()
    return _save(fig, out_path)


def plot_kill(kills: Sequence[Mapping[str, Any]], out_path: Path) -> Path:
    """One column per kill run: hit rate per window (fleet and per engine), then requests per engine."""
    fig, axes = plt.subplots(2, len(kills), figsize=(8.5 * len(kills), 7), sharex="col", squeeze=False)
    for column, kill in enumerate(kills):
        _plot_one_kill(kill, axes[0][column], axes[1][column])
    fig.tight_layout()
    return _save(fig, out_path)


def _plot_one_kill(kill: Mapping[str, Any], rate_ax: Any, engines_ax: Any) -> None:
    windows = [w for w in kill["hit_rate_windows"] if w["hit_rate"] is not None]
    mids = [(w["t_start_s"] + w["t_end_s"]) / 2 for w in windows]
    rate_ax.plot(mids, [w["hit_rate"] for w in windows], marker="o", color="black", label="fleet")
    for engine in kill["engines"]:
        values = [w["per_engine"].get(engine) for w in windows]
        rate_ax.plot(mids, [math.nan if v is None else v for v in values], alpha=0.35, linewidth=1,
                     label=engine)
    moves, base = kill["tenant_moves"], kill["baseline_moves_without_kill"]
    rate_ax.set(ylabel=f"prefix hit rate per {kill['window_s']:g} s window", ylim=(0, 1))
    # Three short lines: side by side, one long line per column ran into the next column's title.
    rate_ax.set_title(f"{kill['policy']}, {kill['regime']}, {kill['rate']:g} req/s: {kill['killed']} killed "
                      f"({kill['victim_rule']})\nsurvivors' tenants that changed engine: "
                      f"{moves['tenants_on_survivors_moved']} of {moves['tenants_on_survivors']} "
                      f"(without a kill: {base['tenants_on_survivors_moved']} of "
                      f"{base['tenants_on_survivors']})"
                      f"\ntheir later requests kept where they were: "
                      f"{_pct(moves.get('survivor_tenant_requests_kept_beyond_killed_share'))} "
                      f"(killed-engine part free to move; none free: "
                      f"{_pct(moves['survivor_tenant_requests_on_a_previous_engine'])}; "
                      f"no kill: {_pct(base['survivor_tenant_requests_on_a_previous_engine'])})",
                      fontsize="small")
    engines_ax.set(xlabel="seconds into the run", ylabel="requests started per second")
    timeline = kill["requests_timeline"]
    end = max((row["start_s"] for row in timeline), default=0.0)
    width = 2.0
    edges = [i * width for i in range(int(end // width) + 2)]
    for engine in kill["engines"]:
        counts = [sum(1 for row in timeline if row["engine"] == engine and lo <= row["start_s"] < lo + width)
                  / width for lo in edges]
        engines_ax.plot([lo + width / 2 for lo in edges], counts, marker=".", label=engine)
    for ax in (rate_ax, engines_ax):
        ax.axvline(kill["killed_at_s"], color="red", linestyle="--", label="kill")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=3)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _save(fig: Any, out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
