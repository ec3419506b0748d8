"""Throughput of ``llm-gateway serve --workers N`` at 1 and 2 workers: the same closed-loop load
(64 concurrent non-stream completions, 64 words in, 16 tokens out) through a gateway with one worker
and one with two, in front of the same two sim engines (``instant`` profile: no model time, so the
gateway and the engines' HTTP handling are the work), interleaved round by round.

Reported per worker count: requests per second, gateway CPU ms per request (parent and workers, from
/proc over the measured batches only), the engines' and the load generator's CPU per request (they
share the machine's cores with the gateway), how the requests spread over the workers (the
``x-llm-gateway-worker`` header; the workers share one listening socket, so a burst of new
connections goes to whichever worker accepts first, and keep-alive connections stay there), and the
scaling ratio (2-worker over 1-worker throughput), with the machine's core count and load average.
On a machine whose cores the load generator and the engines also need, the ratio says how much of
that machine a second worker could take, not how the gateway scales on dedicated cores.
Writes JSON and a PNG. Run: ``python -m benchmarks.workers [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from backends.launchers.process import ProcessLauncher, free_port
from benchmarks.loadgen import ArrivalProcess, run_load
from benchmarks.workloads import UniformRandomWorkload

MODEL = "sim-model"
RESULTS = Path(__file__).resolve().parent / "results"
WORKER_HEADER = "x-llm-gateway-worker"
CONCURRENCY = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def start(name: str, command: list[str], port: int, log_dir: Path) -> ProcessLauncher:
    launcher = ProcessLauncher(name, command, port, log_path=log_dir / f"{name}.log")
    launcher.start()
    asyncio.run(launcher.wait_healthy(60))
    return launcher


def start_gateway(engines: list[ProcessLauncher], workers: int, log_dir: Path) -> ProcessLauncher:
    backends = [{"name": e.name, "kind": "vllm", "url": e.url, "models": [MODEL]} for e in engines]
    config = {"backends": backends,
              "routing": {"default_policy": "round_robin"}, "server": {"log_level": "warning"}}
    config_path = log_dir / f"gateway-{workers}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    gateway = start(f"gateway-{workers}w", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                            str(config_path), "--port", str(port), "--workers", str(workers)],
                    port, log_dir)
    if workers > 1:  # /health answered as soon as one worker serves
        assert gateway.process is not None
        deadline = time.monotonic() + 60
        while len(children(gateway.process.pid)) < workers:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        time.sleep(1.0)
    return gateway


def gateway_pids(gateway: ProcessLauncher) -> list[int]:
    assert gateway.process is not None
    return [gateway.process.pid, *children(gateway.process.pid)]


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def load(url: str, n: int, seed: int) -> Any:
    workload = UniformRandomWorkload(input_words=64, output_tokens=16, range_ratio=0.0)
    return asyncio.run(run_load(url, workload.generate(n, seed=seed),
                                ArrivalProcess(max_concurrency=CONCURRENCY, seed=seed), model=MODEL,
                                stream=False, ignore_eos=True, capture_headers=[WORKER_HEADER]))


def measure(gateway: ProcessLauncher, engines: list[ProcessLauncher], workers: int, n: int,
            seed: int) -> dict[str, Any]:
    pids = gateway_pids(gateway)
    engine_pids = [e.process.pid for e in engines if e.process is not None]
    assert len(pids) == 1 + (workers if workers > 1 else 0), pids
    gw0, en0, lg0 = total_cpu(pids), total_cpu(engine_pids), time.process_time()
    result = load(gateway.url, n, seed)
    gw_cpu, en_cpu = total_cpu(pids) - gw0, total_cpu(engine_pids) - en0
    lg_cpu = time.process_time() - lg0
    ok = [r for r in result.records if r.success]
    spread = Counter(r.headers.get(WORKER_HEADER, "0") for r in ok)
    return {
        "workers": workers, "requests": len(result.records), "failed": len(result.records) - len(ok),
        "duration_s": result.duration, "requests_per_s": len(ok) / result.duration,
        "e2el_p50_ms": float(np.percentile([r.e2el for r in ok], 50) * 1000),
        "gateway_cpu_ms_per_request": 1000 * gw_cpu / len(result.records),
        "gateway_cpu_cores": gw_cpu / result.duration,
        "engines_cpu_ms_per_request": 1000 * en_cpu / len(result.records),
        "loadgen_cpu_ms_per_request": 1000 * lg_cpu / len(result.records),
        "requests_per_worker": dict(sorted(spread.items())),
        "loadavg_after": os.getloadavg(),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workers in (1, 2):
        mine = [r for r in rows if r["workers"] == workers]
        requests = sum(r["requests"] for r in mine)
        ok = sum(r["requests"] - r["failed"] for r in mine)
        out[f"workers_{workers}"] = {
            "requests_per_s": ok / sum(r["duration_s"] for r in mine),
            "gateway_cpu_ms_per_request": sum(r["gateway_cpu_ms_per_request"] * r["requests"] for r in mine)
            / requests,
            "gateway_cpu_cores": float(np.mean([r["gateway_cpu_cores"] for r in mine])),
            "e2el_p50_ms": float(np.median([r["e2el_p50_ms"] for r in mine])),
            "failed": sum(r["failed"] for r in mine),
            "requests_per_worker": dict(sum((Counter(r["requests_per_worker"]) for r in mine), Counter())),
        }
    out["scaling_ratio"] = out["workers_2"]["requests_per_s"] / out["workers_1"]["requests_per_s"]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, rows = results["summary"], results["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, field, label in ((axes[0], "requests_per_s", "requests / s"),
                             (axes[1], "gateway_cpu_ms_per_request", "gateway CPU ms / request")):
        ax.bar(["1 worker", "2 workers"], [summary[f"workers_{w}"][field] for w in (1, 2)],
               color=["tab:blue", "tab:orange"], alpha=0.6)
        for row in rows:
            ax.plot(row["workers"] - 1, row[field], "k.", markersize=8)
        ax.set(ylabel=label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title(f"Throughput (scaling ratio {summary['scaling_ratio']:.2f})")
    axes[1].set_title("Gateway CPU per request (all its processes)")
    machine = results["machine"]
    fig.suptitle(f"serve --workers N, {CONCURRENCY} concurrent non-stream requests, sim engines (instant); "
                 f"{machine['cpus']} cores shared with load generator and engines, "
                 f"load avg {machine['loadavg_start'][0]:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round of about 4 s per worker count")
    parser.add_argument("--seconds", type=float, default=8.0, help="target length of one batch")
    parser.add_argument("--out", default=str(RESULTS / "workers.json"))
    args = parser.parse_args(argv)
    rounds, seconds = (1, 4.0) if args.quick else (3, args.seconds)
    log_dir = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    results: dict[str, Any] = {
        "settings": {"concurrency": CONCURRENCY, "rounds": rounds, "target_batch_s": seconds,
                     "workload": "uniform, 64 words in, 16 tokens out, ignore_eos, non-stream",
                     "engines": "2 sim engines, vllm dialect, instant profile, --max-num-seqs 512",
                     "gateway": "llm-gateway serve --workers N, round robin, no auth, no limits",
                     "pinning": "none: gateway, engines and load generator share every core"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "runs": [],
    }
    engines: list[ProcessLauncher] = []
    gateways: dict[int, ProcessLauncher] = {}
    try:
        for i in range(2):
            port = free_port()
            command = [sys.executable, "-m", "backends.sim", "--dialect", "vllm", "--model", MODEL,
                       "--profile", "instant", "--max-num-seqs", "512", "--port", str(port)]
            engines.append(start(f"engine-{i}", command, port, log_dir))
        for workers in (1, 2):
            gateways[workers] = start_gateway(engines, workers, log_dir)
        rate = {w: 0.0 for w in (1, 2)}
        for workers, gateway in gateways.items():  # warm up, and size the batches to ~seconds
            rate[workers] = measure(gateway, engines, workers, 600, 99)["requests_per_s"]
        for round_no in range(rounds):
            for workers, gateway in gateways.items():
                n = max(500, round(rate[workers] * seconds))
                row = measure(gateway, engines, workers, n, round_no)
                rate[workers] = row["requests_per_s"]
                results["runs"].append({"round": round_no, **row})
                print(json.dumps(results["runs"][-1]), file=sys.stderr)
    finally:
        for launcher in [*gateways.values(), *engines]:
            launcher.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(json.dumps({"summary": results["summary"], "machine": results["machine"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
