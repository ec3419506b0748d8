"""What each part of the full pipeline costs: the same closed-loop load through four gateways that add
one part at a time, in front of the same stand-in engine, interleaved round by round:

- ``off``: no auth, no limits, round robin (the relay alone);
- ``keys+routing``: API key auth, prefix_affinity, a tenant without limits;
- ``+memory limits``: the full pipeline's limits (rpm and tpm) on the in-memory store;
- ``full``: the same limits on Redis (the overhead benchmark's full config, speculative admission on).

The engine is nginx answering a fixed vLLM body (``nginx_engine.py``) and the load is wrk
(``wrk_load.py``), so the gateway's CPU is the machine's main cost; each gateway is pinned to core 0
(the engine, wrk and Redis get the other). Reported per variant and connection count: gateway CPU ms per
request (from /proc, over its batches only), added p50 latency against the engine direct (wrk's p50, the
direct batch run just before), throughput. Writes JSON and a PNG. Run: ``python -m
benchmarks.pipeline_cost [--quick]``. Needs nginx and wrk (Debian: ``apt-get install nginx-light wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from backends.launchers.process import ProcessLauncher, free_port
from benchmarks.nginx_engine import nginx_command
from benchmarks.overhead import MODEL, cpu_seconds, drop_redis_keys, gateway_config
from benchmarks.workers import start, wrk_bodies
from benchmarks.wrk_load import run_wrk, write_completions_script

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("off", "keys+routing", "+memory limits", "full")
GATEWAY_CORE = 0


def variant_config(variant: str, engine_url: str, prefix: str) -> tuple[dict[str, Any], str | None]:
    """The gateway config of ``variant`` (see the module docstring) and the key its clients send."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    config, key = gateway_config(engine_url, variant != "off", prefix)
    if variant in ("keys+routing", "+memory limits"):
        tenancy = config["tenancy"]
        tenancy["store"] = "memory"
        if variant == "keys+routing":
            tenancy["tenants"] = [{"name": tenancy["tenants"][0]["name"]}]
    return config, key


def start_engine(log_dir: Path) -> ProcessLauncher:
    port = free_port()
    return start("engine", nginx_command(port, MODEL, log_dir / "nginx"), port, log_dir)


def redis_prefix() -> str:
    return f"bench-cost-{os.getpid()}:"


def start_gateway(variant: str, engine_url: str, log_dir: Path) -> tuple[ProcessLauncher, str | None]:
    config, key = variant_config(variant, engine_url, redis_prefix())
    name = variant.replace("+", "plus-").replace(" ", "-")
    config_path = log_dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    return start(name, serve_command(config_path, port), port, log_dir), key


def serve_command(config_path: Path, port: int) -> list[str]:
    """``llm-gateway serve`` with ``config_path`` on ``port``, pinned to ``GATEWAY_CORE``."""
    return ["taskset", "-c", str(GATEWAY_CORE), sys.executable, "-m", "gateway.cli", "serve", "--config",
            str(config_path), "--port", str(port)]


def summarize(rows: list[dict[str, Any]], connections: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        for c in connections:
            mine = [r for r in rows if r["variant"] == variant and r["connections"] == c]
            if not mine:
                continue
            out[f"{variant} c={c}"] = {
                "variant": variant, "connections": c,
                "gateway_cpu_ms_per_request_median": statistics.median(r["gateway_cpu_ms_per_request"]
                                                                       for r in mine),
                "gateway_cpu_ms_per_request_range": [min(r["gateway_cpu_ms_per_request"] for r in mine),
                                                     max(r["gateway_cpu_ms_per_request"] for r in mine)],
                "added_p50_ms_median": statistics.median(r["added_p50_ms"] for r in mine),
                "requests_per_s_median": statistics.median(r["requests_per_s"] for r in mine),
                "failed": sum(r["failed"] for r in mine),
            }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    connections = results["settings"]["connections"]
    fig, axes = plt.subplots(1, len(connections), figsize=(5.5 * len(connections), 4.5), squeeze=False)
    for ax, c in zip(axes[0], connections, strict=True):
        values = [results["summary"][f"{v} c={c}"]["gateway_cpu_ms_per_request_median"] for v in VARIANTS]
        ax.bar(VARIANTS, values, color="tab:blue", alpha=0.6)
        for row in results["runs"]:
            if row["connections"] == c:
                ax.plot(VARIANTS.index(row["variant"]), row["gateway_cpu_ms_per_request"], "k.", markersize=6)
        ax.axhline(0.2, color="tab:red", ls="--", label="bar: 0.20 ms")
        ax.set(title=f"{c} connection(s)", ylabel="gateway CPU ms / request")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Gateway CPU per non-stream request, one part added at a time (nginx stand-in engine, "
                 f"wrk; gateway pinned to one core; {results['machine']['cpus']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s batches")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one batch")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--out", default=str(RESULTS / "pipeline_cost.json"))
    args = parser.parse_args(argv)
    rounds, seconds = (2, 2.0) if args.quick else (args.rounds, args.seconds)
    log_dir = Path(tempfile.mkdtemp(prefix="pipeline-cost-"))
    results: dict[str, Any] = {
        "settings": {"rounds": rounds, "batch_s": seconds, "connections": args.connections,
                     "variants": list(VARIANTS), "engine": "nginx stand-in, fixed vLLM completion body",
                     "load": "wrk, 1 thread, 512 distinct 64-word prompts, non-stream, max_tokens 16",
                     "pinning": f"each gateway on core {GATEWAY_CORE}; engine, wrk and Redis unpinned"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "runs": [],
    }
    engine: ProcessLauncher | None = None
    gateways: dict[str, tuple[ProcessLauncher, Path]] = {}
    try:
        engine = start_engine(log_dir)
        bodies = wrk_bodies()
        direct = write_completions_script(log_dir / "direct.lua", bodies, None)
        for variant in VARIANTS:
            gateway, key = start_gateway(variant, engine.url, log_dir)
            script = write_completions_script(log_dir / f"{len(gateways)}.lua", bodies, key)
            gateways[variant] = (gateway, script)
            run_wrk(gateway.url, gateways[variant][1], 16, 1)  # warm up
        for round_no in range(rounds):
            for c in args.connections:
                base, _ = run_wrk(engine.url, direct, c, seconds)
                order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    gateway, script = gateways[variant]
                    assert gateway.process is not None
                    before = cpu_seconds(gateway.process.pid)
                    report, _ = run_wrk(gateway.url, script, c, seconds)
                    cpu = cpu_seconds(gateway.process.pid) - before
                    row = {"round": round_no, "variant": variant, "connections": c,
                           "requests": report.requests, "failed": report.failed,
                           "requests_per_s": report.ok / report.duration_s,
                           "gateway_cpu_ms_per_request": 1000 * cpu / report.requests,
                           "added_p50_ms": report.latency_p50_ms - base.latency_p50_ms,
                           "direct_p50_ms": base.latency_p50_ms}
                    results["runs"].append(row)
                    print(json.dumps(row), file=sys.stderr)
    finally:
        for gateway, _ in gateways.values():
            gateway.stop()
        if engine is not None:
            engine.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
        drop_redis_keys(redis_prefix())
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"], args.connections)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    for name, row in results["summary"].items():
        low, high = row["gateway_cpu_ms_per_request_range"]
        print(f"{name:22s} CPU {row['gateway_cpu_ms_per_request_median']:.3f} ms/request "
              f"(range {low:.3f}-{high:.3f}), added p50 {row['added_p50_ms_median']:.3f} ms, "
              f"{row['requests_per_s_median']:.0f} req/s, failed {row['failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
