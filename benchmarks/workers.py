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

``--stand-ins`` measures how the gateway itself scales: the engines are nginx answering fixed vLLM
bodies (``nginx_engine.py``) and the load is ``wrk`` (C, ``wrk_load.py``), ~0.03 ms of CPU per
request each here (against 0.32 and 0.20 for the sims and the Python load generator), so most of the
machine's CPU is the gateway's and a second worker has a core to take. ``--pipeline full`` turns on
API keys, Redis limits and prefix_affinity (the overhead benchmark's full config); Redis's own CPU is
then counted beside the others'. The summary adds what 2 workers could reach if each request still
cost what it did with one (the machine's cores over the CPU per request of everything measured) and
the share of it reached. Needs nginx and wrk (Debian: ``apt-get install nginx-light wrk``).

On a machine with more cores, ``--worker-counts 1,2,4,8 --wrk-threads 4 --connections 256`` measures
more counts (each against N times one worker, or all cores at one worker's cost per request, whichever
is lower); the stand-ins and wrk then have cores of their own instead of sharing the gateway's.
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
from benchmarks.nginx_engine import nginx_command
from benchmarks.overhead import cpu_seconds, drop_redis_keys, gateway_config
from benchmarks.workloads import UniformRandomWorkload
from benchmarks.wrk_load import run_wrk, write_completions_script

MODEL = "sim-model"
RESULTS = Path(__file__).resolve().parent / "results"
WORKER_HEADER = "x-llm-gateway-worker"
CONCURRENCY = 64


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


def start_engines(stand_ins: bool, log_dir: Path) -> list[ProcessLauncher]:
    engines = []
    for i in range(2):
        port = free_port()
        if stand_ins:
            command = nginx_command(port, MODEL, log_dir / f"nginx-{i}")
        else:
            command = [sys.executable, "-m", "backends.sim", "--dialect", "vllm", "--model", MODEL,
                       "--profile", "instant", "--max-num-seqs", "512", "--port", str(port)]
        engines.append(start(f"engine-{i}", command, port, log_dir))
    return engines


def redis_prefix() -> str:
    """Where this run's gateways keep their limits in the shared Redis (dropped at the end)."""
    return f"bench-workers-{os.getpid()}:"


def start_gateway(engines: list[ProcessLauncher], workers: int, log_dir: Path,
                  full: bool = False) -> tuple[ProcessLauncher, str | None]:
    """The gateway and the API key its clients send (None with the pipeline off)."""
    config, api_key = gateway_config(engines[0].url, full, redis_prefix())
    config["backends"] = [{"name": e.name, "kind": "vllm", "url": e.url, "models": [MODEL]} for e in engines]
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
    return gateway, api_key


def gateway_pids(gateway: ProcessLauncher) -> list[int]:
    assert gateway.process is not None
    return [gateway.process.pid, *children(gateway.process.pid)]


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def load(url: str, n: int, seed: int, api_key: str | None) -> Any:
    workload = UniformRandomWorkload(input_words=64, output_tokens=16, range_ratio=0.0)
    return asyncio.run(run_load(url, workload.generate(n, seed=seed),
                                ArrivalProcess(max_concurrency=CONCURRENCY, seed=seed), model=MODEL,
                                stream=False, ignore_eos=True, capture_headers=[WORKER_HEADER],
                                api_key=api_key))


def engine_pids(engines: list[ProcessLauncher]) -> list[int]:
    """Each engine's process and its children (nginx's worker)."""
    pids = []
    for engine in engines:
        if engine.process is not None:
            pids += [engine.process.pid, *children(engine.process.pid)]
    return pids


def redis_pid(url: str = "redis://127.0.0.1:6379") -> int | None:
    """The shared Redis's process, to read its CPU (only read: it is not ours to touch)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None
    finally:
        client.close()


def measure(gateway: ProcessLauncher, engines: list[ProcessLauncher], workers: int, n: int,
            seed: int, api_key: str | None = None) -> dict[str, Any]:
    """One batch of ``n`` requests from the Python load generator."""
    pids = gateway_pids(gateway)
    engines_pids = engine_pids(engines)
    assert len(pids) == 1 + (workers if workers > 1 else 0), pids
    gw0, en0, lg0 = total_cpu(pids), total_cpu(engines_pids), time.process_time()
    result = load(gateway.url, n, seed, api_key)
    gw_cpu, en_cpu = total_cpu(pids) - gw0, total_cpu(engines_pids) - en0
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


def wrk_bodies(count: int = 512, stream: bool = False) -> list[bytes]:
    """Completions with distinct 64-word prompts (so prefix_affinity spreads them), 16 tokens out;
    ``stream`` ones ask for the usage chunk, as the field's benchmarks do."""
    workload = UniformRandomWorkload(input_words=64, output_tokens=16, range_ratio=0.0)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    return [json.dumps({"model": MODEL, "prompt": spec.prompt, "max_tokens": spec.max_tokens,
                        "ignore_eos": True, "stream": stream, **extra}).encode()
            for spec in workload.generate(count, seed=7)]


def measure_wrk(gateway: ProcessLauncher, engines: list[ProcessLauncher], workers: int, seconds: float,
                script: Path, redis: int | None, connections: int = CONCURRENCY,
                threads: int = 1) -> dict[str, Any]:
    """One batch of ``seconds`` from wrk (``connections`` connections over ``threads`` threads)."""
    pids = gateway_pids(gateway)
    engines_pids = engine_pids(engines)
    assert len(pids) == 1 + (workers if workers > 1 else 0), pids
    gw0, en0 = total_cpu(pids), total_cpu(engines_pids)
    rd0 = cpu_seconds(redis) if redis is not None else 0.0
    report, lg_cpu = run_wrk(gateway.url, script, connections, seconds, threads)
    gw_cpu, en_cpu = total_cpu(pids) - gw0, total_cpu(engines_pids) - en0
    rd_cpu = cpu_seconds(redis) - rd0 if redis is not None else 0.0
    done = report.requests
    return {
        "workers": workers, "requests": done, "failed": report.failed, "statuses": report.statuses,
        "duration_s": report.duration_s, "requests_per_s": report.ok / report.duration_s,
        "e2el_p50_ms": report.latency_p50_ms, "e2el_p99_ms": report.latency_p99_ms,
        "gateway_cpu_ms_per_request": 1000 * gw_cpu / done,
        "gateway_cpu_cores": gw_cpu / report.duration_s,
        "engines_cpu_ms_per_request": 1000 * en_cpu / done,
        "loadgen_cpu_ms_per_request": 1000 * lg_cpu / done,
        "redis_cpu_ms_per_request": 1000 * rd_cpu / done,
        "machine_cpu_cores": (gw_cpu + en_cpu + lg_cpu + rd_cpu) / report.duration_s,
        "requests_per_worker": dict(sorted(report.workers.items())),
        "loadavg_after": os.getloadavg(),
    }


def summarize(rows: list[dict[str, Any]], cores: int) -> dict[str, Any]:
    """Per worker count: throughput, CPU per request and spread; then each count's scaling over one
    worker and its ceiling: N times one worker's throughput, or, where the cores run out first, every
    core busy with each request costing everything what it cost with one worker."""
    out: dict[str, Any] = {}
    others = ("engines_cpu_ms_per_request", "loadgen_cpu_ms_per_request", "redis_cpu_ms_per_request")
    counts = sorted({r["workers"] for r in rows})
    for workers in counts:
        mine = [r for r in rows if r["workers"] == workers]
        requests = sum(r["requests"] for r in mine)
        ok = sum(r["requests"] - r["failed"] for r in mine)

        def per_request(field: str, mine: list[dict[str, Any]] = mine, requests: int = requests) -> float:
            return float(sum(r.get(field, 0.0) * r["requests"] for r in mine) / requests)

        out[f"workers_{workers}"] = {
            "requests_per_s": ok / sum(r["duration_s"] for r in mine),
            "gateway_cpu_ms_per_request": per_request("gateway_cpu_ms_per_request"),
            "others_cpu_ms_per_request": sum(per_request(field) for field in others),
            "gateway_cpu_cores": float(np.mean([r["gateway_cpu_cores"] for r in mine])),
            "machine_cpu_cores": float(np.mean([r.get("machine_cpu_cores", 0.0) for r in mine])),
            # Redis runs its scripts on one thread: near 1.0 it is what caps the full pipeline.
            "redis_cpu_cores": float(np.mean([r.get("redis_cpu_ms_per_request", 0.0) * r["requests_per_s"]
                                              / 1000 for r in mine])),
            "e2el_p50_ms": float(np.median([r["e2el_p50_ms"] for r in mine])),
            "failed": sum(r["failed"] for r in mine),
            "requests_per_worker": dict(sum((Counter(r["requests_per_worker"]) for r in mine), Counter())),
        }
    one = out["workers_1"]
    cores_bound = 1000 * cores / (one["gateway_cpu_ms_per_request"] + one["others_cpu_ms_per_request"])
    out["scaling"], out["ceiling_requests_per_s"], out["share_of_ceiling_reached"] = {}, {}, {}
    for workers in counts:
        rate = out[f"workers_{workers}"]["requests_per_s"]
        ceiling = min(workers * one["requests_per_s"], cores_bound)
        out["scaling"][str(workers)] = rate / one["requests_per_s"]
        out["ceiling_requests_per_s"][str(workers)] = ceiling
        out["share_of_ceiling_reached"][str(workers)] = rate / ceiling
    if 2 in counts:  # the names the 2-core results and the README use
        out["scaling_ratio"] = out["scaling"]["2"]
        out["two_workers_if_cost_unchanged_requests_per_s"] = out["ceiling_requests_per_s"]["2"]
        out["share_of_that_reached"] = out["share_of_ceiling_reached"]["2"]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, rows = results["summary"], results["runs"]
    counts = sorted({row["workers"] for row in rows})
    labels = [f"{n} worker{'s' if n > 1 else ''}" for n in counts]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, field, label in ((axes[0], "requests_per_s", "requests / s"),
                             (axes[1], "gateway_cpu_ms_per_request", "gateway CPU ms / request")):
        ax.bar(labels, [summary[f"workers_{n}"][field] for n in counts], color="tab:blue", alpha=0.6)
        for row in rows:
            ax.plot(counts.index(row["workers"]), row[field], "k.", markersize=8)
        ax.set(ylabel=label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].plot(range(len(counts)), [summary["ceiling_requests_per_s"][str(n)] for n in counts], "_",
                 color="tab:gray", markersize=40, mew=2,
                 label="ceiling: N x 1 worker, or all cores at 1 worker's cost per request")
    axes[0].legend(fontsize=8, loc="lower right")
    scaling = ", ".join(f"{n}: {summary['scaling'][str(n)]:.2f}x "
                        f"({100 * summary['share_of_ceiling_reached'][str(n)]:.0f}%)" for n in counts[1:])
    axes[0].set_title(f"Throughput (scaling, share of ceiling: {scaling})", fontsize=9)
    axes[1].set_title("Gateway CPU per request (all its processes)")
    machine, setup = results["machine"], results["settings"]
    fig.suptitle(f"{setup['gateway']}\nengines: {setup['engines']}; "
                 f"load: {setup['load']}; {machine['cpus']} cores shared by all, "
                 f"load avg {machine['loadavg_start'][0]:.1f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def settings(stand_ins: bool, full: bool, rounds: int, seconds: float, connections: int = CONCURRENCY,
             wrk_threads: int = 1) -> dict[str, Any]:
    return {
        "concurrency": connections, "rounds": rounds, "target_batch_s": seconds,
        "workload": "uniform, 64 words in, 16 tokens out, ignore_eos, non-stream",
        "engines": ("2 nginx stand-ins answering fixed vLLM bodies (benchmarks/nginx_engine.py)" if stand_ins
                    else "2 sim engines, vllm dialect, instant profile, --max-num-seqs 512"),
        "load": (f"wrk, {wrk_threads} thread{'s' if wrk_threads > 1 else ''}, {connections} keep-alive "
                 "connections, 512 distinct bodies" if stand_ins
                 else f"benchmarks.loadgen, closed loop, {CONCURRENCY} concurrent"),
        "gateway": ("llm-gateway serve --workers N, full pipeline: API key, Redis limits, prefix_affinity, "
                    "metrics, info logs" if full else "llm-gateway serve --workers N, round robin, no auth, "
                    "no limits"),
        "pinning": "none: gateway, engines and load generator share every core"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round of about 4 s per worker count")
    parser.add_argument("--seconds", type=float, default=8.0, help="target length of one batch")
    parser.add_argument("--stand-ins", action="store_true",
                        help="nginx engines and wrk load (see the module docstring)")
    parser.add_argument("--pipeline", choices=("off", "full"), default="off")
    parser.add_argument("--worker-counts", default="1,2",
                        help="comma-separated worker counts, 1 among them (more than 2 wants more cores)")
    parser.add_argument("--connections", type=int, default=CONCURRENCY,
                        help="wrk's keep-alive connections (--stand-ins only)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (--stand-ins only)")
    parser.add_argument("--out", default=None,
                        help="default results/workers.json, with --stand-ins workers_stand_ins_PIPELINE.json")
    args = parser.parse_args(argv)
    full = args.pipeline == "full"
    counts = sorted({int(n) for n in args.worker_counts.split(",")})
    if 1 not in counts or min(counts) < 1:
        parser.error("--worker-counts must hold 1 (every count is compared with one worker)")
    if not args.stand_ins and (counts != [1, 2] or args.connections != CONCURRENCY or args.wrk_threads != 1):
        parser.error("--worker-counts, --connections and --wrk-threads go with --stand-ins")
    rounds, seconds = (1, 4.0) if args.quick else (3, args.seconds)
    default_name = f"workers_stand_ins_{args.pipeline}.json" if args.stand_ins else (
        "workers.json" if not full else "workers_full.json")
    out = Path(args.out) if args.out else RESULTS / default_name
    log_dir = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    results: dict[str, Any] = {
        "settings": {**settings(args.stand_ins, full, rounds, seconds, args.connections, args.wrk_threads),
                     "command": " ".join(["python -m benchmarks.workers", *(argv or sys.argv[1:])])},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "runs": [],
    }
    engines: list[ProcessLauncher] = []
    gateways: dict[int, tuple[ProcessLauncher, str | None]] = {}
    redis = redis_pid() if full else None
    try:
        engines = start_engines(args.stand_ins, log_dir)
        for workers in counts:
            gateways[workers] = start_gateway(engines, workers, log_dir, full)
        if args.stand_ins:
            scripts = {}
            for workers, (gateway, api_key) in gateways.items():
                scripts[workers] = write_completions_script(log_dir / f"wrk-{workers}.lua", wrk_bodies(),
                                                            api_key)
                measure_wrk(gateway, engines, workers, 1, scripts[workers], redis,  # warm up
                            args.connections, args.wrk_threads)
            for round_no in range(rounds):
                for workers, (gateway, _) in gateways.items():
                    row = measure_wrk(gateway, engines, workers, seconds, scripts[workers], redis,
                                      args.connections, args.wrk_threads)
                    results["runs"].append({"round": round_no, **row})
                    print(json.dumps(results["runs"][-1]), file=sys.stderr)
        else:
            rate = {w: 0.0 for w in (1, 2)}
            for workers, (gateway, api_key) in gateways.items():  # warm up, and size the batches
                rate[workers] = measure(gateway, engines, workers, 600, 99, api_key)["requests_per_s"]
            for round_no in range(rounds):
                for workers, (gateway, api_key) in gateways.items():
                    n = max(500, round(rate[workers] * seconds))
                    row = measure(gateway, engines, workers, n, round_no, api_key)
                    rate[workers] = row["requests_per_s"]
                    results["runs"].append({"round": round_no, **row})
                    print(json.dumps(results["runs"][-1]), file=sys.stderr)
    finally:
        for launcher in [*(g for g, _ in gateways.values()), *engines]:
            launcher.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
        if full:
            drop_redis_keys(redis_prefix())
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"], os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(json.dumps({"summary": results["summary"], "machine": results["machine"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
