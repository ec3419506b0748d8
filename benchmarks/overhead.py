"""Gateway overhead, wire to wire: the same client sends the same requests straight to an engine and
through the gateway, interleaved batch by batch in one run, non-stream and stream, at several
concurrencies, with the gateway pinned to one core and the full pipeline on (API keys, Redis limits,
prefix_affinity, metrics, logs) or off (no auth, in-memory limits with none set, round robin), and the
full pipeline again with speculative admission off (``full-sequential``: the engine request waits for
Redis's answer), so the same run shows what starting it beside the admission buys.

Reported per (pipeline, mode, concurrency): added p50/p99 end-to-end latency, added p50 time to first
chunk, gateway CPU ms per request (from /proc of the gateway process during its batches only) and SSE
events relayed per second. Writes JSON and a PNG. Run: ``python -m benchmarks.overhead [--quick]``.

``--peers vllm-router sglang-router litellm`` measures those routers too, by the same method in the same
run (pinned to the same core, in front of the same engine): vllm-router with round_robin, SGLang's router
with cache_aware, LiteLLM's proxy (one worker, a master key, no database: its lightest setup that starts).
They are not dependencies of the project: install them from PyPI in a venv of their own
(``python3 -m venv /tmp/peers && /tmp/peers/bin/pip install vllm-router sglang-router 'litellm[proxy]'``)
and pass its ``bin`` with ``--peer-bin /tmp/peers/bin``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from backends.launchers.process import ProcessLauncher, free_port
from benchmarks.loadgen import ArrivalProcess, run_load
from benchmarks.workloads import UniformRandomWorkload
from gateway.tenancy.keys import generate_key

MODEL = "sim-model"
RESULTS = Path(__file__).resolve().parent / "results"
BAR_CPU_MS = 0.20
BAR_ADDED_TTFT_P50_MS = 1.0
BAR_ADDED_P50_C1_MS = 0.5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SHARED_REDIS_URL = "redis://127.0.0.1:6379"


def sim_engine_command(port: int, step_s: float = 0.0) -> list[str]:
    """The bar benchmark's engine: the simulator, vLLM dialect, instant steps, or each step ``step_s``
    long (one token per stream per step, as a real engine sends them)."""
    timing = ["--step-overhead", str(step_s)] if step_s else []
    return [sys.executable, "-m", "backends.sim", "--dialect", "vllm", "--model", MODEL,
            "--profile", "instant", *timing, "--max-num-seqs", "512", "--port", str(port)]


def gateway_config(engine_url: str, full: bool, prefix: str, speculative: bool = True,
                   redis_url: str = SHARED_REDIS_URL) -> tuple[dict[str, Any], str | None]:
    backend = {"name": "engine", "kind": "vllm", "url": engine_url, "models": [MODEL]}
    if not full:
        return {"backends": [backend], "routing": {"default_policy": "round_robin"},
                "server": {"log_level": "warning"}}, None
    key = generate_key()
    tenancy = {
        "auth_enabled": True, "store": "redis", "redis_url": redis_url, "redis_prefix": prefix,
        "tenants": [{"name": "bench", "limits": {"requests_per_minute": 10_000_000,
                                                 "tokens_per_minute": 70_000_000}}],
        "keys": [{"id": key.key_id, "hash": key.key_hash, "tenant": "bench"}],
        "speculative_admission": speculative,
    }
    return {"backends": [backend], "routing": {"default_policy": "prefix_affinity"},
            "server": {"log_level": "info"}, "tenancy": tenancy}, key.key


def drop_redis_keys(prefix: str, url: str = SHARED_REDIS_URL) -> int:
    """Delete what a benchmark's gateways left in the shared Redis under their own ``prefix`` (a tenant's
    ledger and the keys' last-used times do not expire); nothing else is touched. The count deleted."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    except redis.RedisError:
        return 0
    finally:
        client.close()


LITELLM_MASTER_KEY = "sk-bench-" + "0" * 32
# "full-sequential": the full pipeline with the engine request started only after Redis admitted it
# (tenancy.speculative_admission off), for the same run's comparison.
PIPELINES = ("off", "full", "full-sequential")
PEER_SETUPS = {"vllm-router": "vllm-router, round_robin", "sglang-router": "SGLang router, cache_aware",
               "litellm": "LiteLLM proxy, 1 worker, master key, no database"}


@dataclass(frozen=True)
class PeerLaunch:
    command: list[str]
    api_key: str | None = None  # what clients must send
    health_path: str = "/health"  # answers 200 without a key once the peer serves


def peer_launch(name: str, bin_dir: Path, engine_url: str, port: int, work_dir: Path) -> PeerLaunch:
    """How to start peer ``name`` in front of ``engine_url``. The Rust routers get their metrics on a
    free port. LiteLLM's proxy refuses to start without a master key (so clients send it), answers
    ``/health`` only with a key (and calls the models), and fetches its cost map unless told not to
    (no internet here): its config goes to ``work_dir``."""
    common = ["--worker-urls", engine_url, "--host", "127.0.0.1", "--port", str(port),
              "--prometheus-port", str(free_port())]
    if name == "vllm-router":
        return PeerLaunch([str(bin_dir / "vllm-router"), *common, "--policy", "round_robin",
                           "--log-level", "warning"])
    if name == "sglang-router":
        return PeerLaunch([str(bin_dir / "sglang-router"), "launch", *common, "--policy", "cache_aware",
                           "--log-level", "warn"])
    if name == "litellm":
        config_path = work_dir / "litellm.yaml"
        config_path.write_text(yaml.safe_dump({
            "model_list": [{"model_name": MODEL, "litellm_params": {
                "model": f"openai/{MODEL}", "api_base": f"{engine_url}/v1", "api_key": "none"}}],
            "litellm_settings": {"telemetry": False},
            "general_settings": {"master_key": LITELLM_MASTER_KEY}}))
        command = ["env", "LITELLM_LOCAL_MODEL_COST_MAP=True", str(bin_dir / "litellm"), "--config",
                   str(config_path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        return PeerLaunch(command, api_key=LITELLM_MASTER_KEY, health_path="/health/liveliness")
    raise ValueError(f"unknown peer {name!r}")


def start(name: str, command: list[str], port: int, log_dir: Path, core: int,
          health_path: str = "/health") -> ProcessLauncher:
    launcher = ProcessLauncher(name, ["taskset", "-c", str(core), *command], port,
                               log_path=log_dir / f"{name}.log", health_path=health_path)
    launcher.start()
    asyncio.run(launcher.wait_healthy(60))
    return launcher


async def batch(url: str, n: int, concurrency: int, stream: bool, seed: int,
                api_key: str | None) -> list[Any]:
    workload = UniformRandomWorkload(input_words=64, output_tokens=16, range_ratio=0.0)
    result = await run_load(url, workload.generate(n, seed=seed),
                            ArrivalProcess(max_concurrency=concurrency, seed=seed), model=MODEL,
                            stream=stream, ignore_eos=True, api_key=api_key)
    return list(result.records)


def summarize(direct: list[Any], via: list[Any], cpu_s: float, wall_s: float) -> dict[str, Any]:
    def pct(records: list[Any], field: str, q: float) -> float | None:
        values = [getattr(r, field) for r in records if r.success and getattr(r, field) is not None]
        return float(np.percentile(values, q) * 1000) if values else None

    out: dict[str, Any] = {"requests": len(via), "failed": sum(not r.success for r in direct + via)}
    for field in ("e2el", "ttft"):
        for q in (50, 99):
            d, g = pct(direct, field, q), pct(via, field, q)
            out[f"{field}_p{q}_direct_ms"] = d
            out[f"{field}_p{q}_gateway_ms"] = g
            out[f"added_{field}_p{q}_ms"] = None if d is None or g is None else g - d
    events = sum(len(r.itl) + 1 for r in via if r.success and r.ttft is not None)
    out["gateway_cpu_ms_per_request"] = 1000 * cpu_s / len(via)
    out["gateway_cpu_s_per_1000_requests"] = 1000 * cpu_s / len(via)
    out["relayed_events_per_s"] = events / wall_s if events else None
    out["relayed_events_per_cpu_s"] = events / cpu_s if events and cpu_s else None
    return out


def measure(engine_url: str, gateway: ProcessLauncher, api_key: str | None, concurrency: int,
            stream: bool, n: int, rounds: int) -> dict[str, Any]:
    assert gateway.process is not None
    pid = gateway.process.pid
    asyncio.run(batch(gateway.url, 50, concurrency, stream, 0, api_key))  # warm up connections
    direct: list[Any] = []
    via: list[Any] = []
    cpu = wall = 0.0
    for round_no in range(rounds):
        direct += asyncio.run(batch(engine_url, n, concurrency, stream, round_no, None))
        before, started = cpu_seconds(pid), time.perf_counter()
        via += asyncio.run(batch(gateway.url, n, concurrency, stream, round_no, api_key))
        cpu += cpu_seconds(pid) - before
        wall += time.perf_counter() - started
    return summarize(direct, via, cpu, wall)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for pipeline, runs in results["runs"].items():
        for mode in ("non-stream", "stream"):
            points = [(r["concurrency"], r) for r in runs if r["mode"] == mode]
            xs = [c for c, _ in points]
            axes[0].plot(xs, [r["gateway_cpu_ms_per_request"] for _, r in points], marker="o",
                         label=f"{pipeline}, {mode}")
            axes[1].plot(xs, [r["added_e2el_p50_ms"] for _, r in points], marker="o",
                         label=f"{pipeline}, {mode}")
    axes[0].axhline(BAR_CPU_MS, color="red", linestyle="--", label=f"bar {BAR_CPU_MS} ms")
    axes[0].set(xscale="log", xlabel="concurrency", ylabel="gateway CPU ms / request",
                title="Gateway CPU per request (pinned to one core)")
    axes[1].set(xscale="log", xlabel="concurrency", ylabel="ms", title="Added p50 end-to-end latency")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"llm-gateway overhead vs direct engine ({results['machine']['cpus']} shared cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and concurrencies")
    parser.add_argument("--out", default=str(RESULTS / "overhead.json"))
    parser.add_argument("--peers", nargs="*", default=[], choices=sorted(PEER_SETUPS),
                        help="also measure these routers (installed separately, see --peer-bin)")
    parser.add_argument("--peer-bin", type=Path, default=Path(sys.executable).parent,
                        help="the folder holding the peers' executables")
    parser.add_argument("--redis-url", default=SHARED_REDIS_URL,
                        help="the limits' Redis (e.g. a private redis-server pinned off the gateway's core)")
    args = parser.parse_args(argv)
    concurrencies = (1, 16) if args.quick else (1, 16, 64)
    n, rounds = (100, 2) if args.quick else (300, 3)
    log_dir = Path(tempfile.mkdtemp(prefix="overhead-"))
    engine_port = free_port()
    engine = start("engine", sim_engine_command(engine_port), engine_port, log_dir, core=1)
    results: dict[str, Any] = {
        "settings": {"concurrencies": concurrencies, "requests_per_batch": n, "rounds": rounds,
                     "workload": "uniform, 64 words in, 16 tokens out, ignore_eos",
                     "engine": "sim, vllm dialect, instant profile, pinned to core 1",
                     "gateway": "llm-gateway serve, uvicorn+httptools+uvloop, pinned to core 0",
                     "redis": args.redis_url},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "bar": {"cpu_ms_per_request": BAR_CPU_MS, "added_ttft_p50_ms": BAR_ADDED_TTFT_P50_MS,
                "added_p50_c1_ms": BAR_ADDED_P50_C1_MS},
        "peers": {name: PEER_SETUPS[name] for name in args.peers},
        "runs": {},
    }
    try:
        for pipeline in (*PIPELINES, *args.peers):
            port = free_port()
            api_key: str | None = None
            health_path = "/health"
            if pipeline in PEER_SETUPS:
                peer = peer_launch(pipeline, args.peer_bin, engine.url, port, log_dir)
                command, api_key, health_path = peer.command, peer.api_key, peer.health_path
            else:
                config, api_key = gateway_config(engine.url, pipeline != "off", f"bench-{os.getpid()}:",
                                                 speculative=pipeline == "full", redis_url=args.redis_url)
                config_path = log_dir / f"gateway-{pipeline}.yaml"
                config_path.write_text(yaml.safe_dump(config))
                command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path),
                           "--port", str(port)]
            gateway = start(f"gateway-{pipeline}", command, port, log_dir, core=0, health_path=health_path)
            runs = []
            try:
                for stream in (False, True):
                    for concurrency in concurrencies:
                        row = measure(engine.url, gateway, api_key, concurrency, stream, n, rounds)
                        row |= {"mode": "stream" if stream else "non-stream", "concurrency": concurrency}
                        runs.append(row)
                        print(json.dumps({"pipeline": pipeline, **row}), file=sys.stderr)
            finally:
                gateway.stop()
            results["runs"][pipeline] = runs
    finally:
        engine.stop()
        drop_redis_keys(f"bench-{os.getpid()}:", args.redis_url)
    results["machine"]["loadavg_end"] = os.getloadavg()
    full = results["runs"]["full"]
    results["bar_check"] = {
        "cpu_ms_per_request_full": max(r["gateway_cpu_ms_per_request"] for r in full),
        "added_ttft_p50_ms_full": max(r["added_ttft_p50_ms"] or 0.0 for r in full if r["mode"] == "stream"),
        "added_p50_c1_ms_full": next(r["added_e2el_p50_ms"] for r in full
                                     if r["concurrency"] == 1 and r["mode"] == "non-stream"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(json.dumps(results["bar_check"], indent=2))
    subprocess.run(["rm", "-rf", str(log_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
