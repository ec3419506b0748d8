"""PNG plots of a results file (matplotlib, Agg backend): TTFT CDF per run, latency vs rate, and
throughput vs rate. The x axis of the rate plots is the offered request rate; a run with rate inf
(all at once or closed loop) is placed at its achieved request throughput instead."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_LATENCIES = (("ttft_ms", "p50", "TTFT p50"), ("ttft_ms", "p99", "TTFT p99"), ("tpot_ms", "p50", "TPOT p50"),
              ("tpot_ms", "p99", "TPOT p99"), ("e2el_ms", "p50", "E2EL p50"))


def run_rate(run: Mapping[str, Any]) -> float:
    rate = run["settings"]["arrival"]["rate"]
    if isinstance(rate, str) or not math.isfinite(float(rate)):
        return float(run["aggregate"]["request_throughput"])
    return float(rate)


def plot_results(document: Mapping[str, Any], out_path: Path) -> Path:
    runs = sorted(document["runs"], key=run_rate)
    fig, (cdf, latency, throughput) = plt.subplots(1, 3, figsize=(17, 5))
    for run in runs:
        ttfts = sorted(row["ttft_s"] * 1000 for row in run["records"] if row["success"] and row["ttft_s"])
        if ttfts:
            cdf.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], label=run["label"])
    cdf.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT CDF")
    cdf.grid(alpha=0.3)
    if runs:
        cdf.legend(fontsize="small")

    rates = [run_rate(run) for run in runs]
    for metric, stat, label in _LATENCIES:
        values = [run["aggregate"][metric][stat] for run in runs]
        if any(v is not None for v in values):
            latency.plot(rates, [math.nan if v is None else v for v in values], marker="o", label=label)
    latency.set(xlabel="request rate (req/s)", ylabel="ms", title="Latency vs rate", yscale="log")
    latency.grid(alpha=0.3, which="both")
    latency.legend(fontsize="small")

    throughput.plot(rates, [run["aggregate"]["output_throughput"] for run in runs], marker="o",
                    color="tab:blue", label="output tokens/s")
    throughput.set(xlabel="request rate (req/s)", ylabel="output tokens/s", title="Throughput vs rate")
    throughput.grid(alpha=0.3)
    requests_axis = throughput.twinx()
    requests_axis.plot(rates, [run["aggregate"]["request_throughput"] for run in runs], marker="s",
                       color="tab:green", label="completed req/s")
    goodputs = [run["aggregate"]["goodput"] for run in runs]
    if any(g is not None for g in goodputs):
        requests_axis.plot(rates, [math.nan if g is None else g for g in goodputs], marker="^",
                           color="tab:red", label="goodput req/s")
    requests_axis.set_ylabel("requests/s")
    lines = throughput.get_legend_handles_labels()[0] + requests_axis.get_legend_handles_labels()[0]
    throughput.legend(lines, [str(line.get_label()) for line in lines], fontsize="small", loc="upper left")

    settings = document.get("settings", {})
    fig.suptitle(f"{settings.get('workload', {}).get('name', '')} against {settings.get('url', '')} "
                 f"(model {settings.get('model', '')}, {document.get('machine', {}).get('cpu_count')} CPUs)",
                 fontsize="medium")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
