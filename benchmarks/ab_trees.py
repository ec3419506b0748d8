"""A/B of the gateway between two versions of its source: the working tree against a git commit, run side
by side with the same config in front of the same engine, the batches interleaved round by round and
compared pair by pair.

Why paired rounds: on this VM one batch's CPU per request moves by 10-20% from one minute to the next,
so two separate runs of a benchmark cannot tell a 5% change; within one round the two versions see the
same machine, and the per-round differences (with how many rounds each version won) can.

The engine is nginx answering a fixed vLLM body (``nginx_engine.py``) and the load is wrk
(``wrk_load.py``): both cheap, so the gateway, pinned to core 0, is the machine's main cost. With
``--engine sim`` the engine is the simulator with instant steps on core 1, as in the bar benchmark
(``overhead.py``): it answers in about a millisecond where nginx answers in microseconds, which decides
whether Redis' answer comes before or after the engine's, so a change to that path can read
differently against each. Each round
runs one direct batch (the engine's own latency), then one batch per version in alternating order.
Reported per version and connection count: gateway CPU ms per request (user and system apart, from
/proc), added p50 latency (wrk's p50 against the round's direct batch), requests per second; and per
pair: the median difference and the rounds the working tree used less CPU. The base commit is checked out
into a temporary git worktree (removed after). Writes JSON and a PNG.

``--mode stream`` sends 16-token streams with the usage chunk (simulator only); ``--engine-step-ms``
gives the simulator's steps a duration, so that a stream's events arrive one by one as from a real
engine rather than in bursts.

Run: ``python -m benchmarks.ab_trees --base 6cf9dd1 [--variant full] [--engine nginx|sim]
[--mode non-stream|stream] [--engine-step-ms 0] [--connections 1 16 64] [--rounds 8] [--seconds 3]``.
Needs nginx and wrk (Debian: ``apt-get install nginx-light wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from backends.launchers.process import ProcessLauncher, free_port
from benchmarks.loadgen.results import git_state, machine_info, write_json
from benchmarks.overhead import drop_redis_keys, sim_engine_command
from benchmarks.pipeline_cost import (
    GATEWAY_CORE,
    VARIANTS,
    redis_prefix,
    serve_command,
    start_engine,
    variant_config,
)
from benchmarks.workers import start, wrk_bodies
from benchmarks.wrk_load import run_wrk, write_completions_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKING = "working tree"


def cpu_split_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextmanager
def worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """``ref`` checked out in a temporary worktree: (its path, the full commit id)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ab-base-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), commit],
                       check=True)
        try:
            yield path, commit
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def start_gateway_from(tree: Path, name: str, config: dict[str, Any], log_dir: Path) -> ProcessLauncher:
    """A gateway run from the sources in ``tree`` (its directory first on the module path)."""
    config_path = log_dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    serve = serve_command(config_path, port)
    command = ["bash", "-c", f"cd {shlex.quote(str(tree))} && exec {shlex.join(serve)}"]
    return start(name, command, port, log_dir)


ENGINES = ("nginx", "sim")


MODES = ("non-stream", "stream")


def start_sim_engine(log_dir: Path, step_s: float = 0.0) -> ProcessLauncher:
    """The simulator (vLLM dialect) pinned to core 1, as ``overhead.py`` runs it: instant steps, or each
    engine step taking ``step_s`` (one token per stream per step, as a real engine sends them)."""
    port = free_port()
    return start("engine", ["taskset", "-c", "1", *sim_engine_command(port, step_s)], port, log_dir)


def measure(trees: dict[str, Path], variant: str, connections: list[int], rounds: int, seconds: float,
            log_dir: Path, engine_kind: str = "nginx", mode: str = "non-stream",
            step_s: float = 0.0) -> list[dict[str, Any]]:
    if mode == "stream" and engine_kind != "sim":
        raise ValueError("streams need --engine sim (the nginx stand-in answers one fixed non-stream body)")
    engine = start_sim_engine(log_dir, step_s) if engine_kind == "sim" else start_engine(log_dir)
    gateways: dict[str, ProcessLauncher] = {}
    scripts: dict[str, Path] = {}
    rows: list[dict[str, Any]] = []
    try:
        for index, (name, tree) in enumerate(trees.items()):
            config, key = variant_config(variant, engine.url, f"{redis_prefix()}{index}:")
            gateways[name] = start_gateway_from(tree, f"gateway-{index}", config, log_dir)
            scripts[name] = write_completions_script(log_dir / f"load-{index}.lua",
                                                     wrk_bodies(stream=mode == "stream"), key)
        for name, gateway in gateways.items():  # warm up: connections, caches, the limiter's scripts
            report, _ = run_wrk(gateway.url, scripts[name], 16, 1.0)
            if report.ok != report.requests:
                raise RuntimeError(f"{name} failed its warm-up: {report.statuses}")
        for c in connections:
            for round_index in range(rounds):
                direct, _ = run_wrk(engine.url, scripts[WORKING], c, seconds)
                order = list(gateways) if round_index % 2 == 0 else list(reversed(gateways))
                for name in order:
                    pid = gateways[name].process.pid  # type: ignore[union-attr]
                    user0, sys0 = cpu_split_s(pid)
                    report, _ = run_wrk(gateways[name].url, scripts[name], c, seconds)
                    user1, sys1 = cpu_split_s(pid)
                    done = max(report.requests, 1)
                    rows.append({
                        "version": name, "connections": c, "round": round_index, "requests": report.requests,
                        "failed": report.requests - report.ok + report.socket_errors,
                        "gateway_cpu_ms_per_request": 1000 * ((user1 - user0) + (sys1 - sys0)) / done,
                        "user_ms_per_request": 1000 * (user1 - user0) / done,
                        "system_ms_per_request": 1000 * (sys1 - sys0) / done,
                        "added_p50_ms": report.latency_p50_ms - direct.latency_p50_ms,
                        "requests_per_s": report.requests / report.duration_s})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        engine.stop()
        drop_redis_keys(redis_prefix())
    return rows


def summarize(rows: list[dict[str, Any]], base: str, connections: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in connections:
        mine = {(r["version"], r["round"]): r for r in rows if r["connections"] == c}
        entry: dict[str, Any] = {}
        for version in (base, WORKING):
            runs = [r for (v, _), r in mine.items() if v == version]
            entry[version] = {key: statistics.median(r[key] for r in runs) for key in (
                "gateway_cpu_ms_per_request", "user_ms_per_request", "system_ms_per_request", "added_p50_ms",
                "requests_per_s")}
            entry[version]["failed"] = sum(r["failed"] for r in runs)
        rounds = sorted({round_index for (_, round_index) in mine})
        cpu = "gateway_cpu_ms_per_request"
        cpu_diffs = [mine[(WORKING, i)][cpu] - mine[(base, i)][cpu] for i in rounds]
        p50_diffs = [mine[(WORKING, i)]["added_p50_ms"] - mine[(base, i)]["added_p50_ms"] for i in rounds]
        entry["paired"] = {
            "rounds": len(rounds),
            "cpu_ms_difference_median": statistics.median(cpu_diffs),
            "cpu_relative_difference_median": statistics.median(
                d / mine[(base, i)][cpu] for d, i in zip(cpu_diffs, rounds, strict=True)),
            "rounds_working_tree_used_less_cpu": sum(d < 0 for d in cpu_diffs),
            "added_p50_ms_difference_median": statistics.median(p50_diffs),
            "rounds_working_tree_added_less_latency": sum(d < 0 for d in p50_diffs),
        }
        out[f"c={c}"] = entry
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = result["settings"]["base_label"]
    connections = result["settings"]["connections"]
    fig, axes = plt.subplots(1, len(connections), figsize=(4.5 * len(connections), 4.2), squeeze=False)
    for ax, c in zip(axes[0], connections, strict=True):
        for offset, version in ((-0.1, base), (0.1, WORKING)):
            runs = sorted((r for r in result["runs"] if r["connections"] == c and r["version"] == version),
                          key=lambda r: r["round"])
            ax.plot([r["round"] + offset for r in runs], [r["gateway_cpu_ms_per_request"] for r in runs], "o",
                    label=version)
        ax.axhline(0.2, color="tab:red", ls="--", lw=1, label="bar: 0.20 ms")
        ax.set(title=f"{c} connection(s)", xlabel="round", ylabel="gateway CPU ms / request")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    settings = result["settings"]
    fig.suptitle(f"A/B, paired rounds: {base} vs the working tree ({settings['variant']} pipeline, "
                 f"{settings.get('mode', 'non-stream')}, engine: {settings['engine']}, wrk, gateway "
                 "pinned to one core)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _steps(step_ms: float) -> str:
    return f"{step_ms:g} ms steps" if step_ms else "instant steps"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the git commit (or any ref) to compare against")
    parser.add_argument("--variant", choices=VARIANTS, default="full")
    parser.add_argument("--engine", choices=ENGINES, default="nginx")
    parser.add_argument("--mode", choices=MODES, default="non-stream",
                        help="stream: 16-token streams with the usage chunk (needs --engine sim)")
    parser.add_argument("--engine-step-ms", type=float, default=0.0,
                        help="with --engine sim: each engine step takes this long (0: instant steps)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one batch")
    parser.add_argument("--out", type=Path, default=RESULTS / "ab_trees.json")
    args = parser.parse_args(argv)
    machine = machine_info()
    working = git_state(ROOT)
    with worktree(args.base) as (base_tree, commit), tempfile.TemporaryDirectory() as tmp:
        base_label = f"base {commit[:8]}"
        rows = measure({base_label: base_tree, WORKING: ROOT}, args.variant, args.connections, args.rounds,
                       args.seconds, Path(tmp), args.engine, args.mode, args.engine_step_ms / 1000)
    machine["loadavg_end"] = list(os.getloadavg())
    settings = {"base": commit, "base_label": base_label, "working_tree_head": working["commit"],
                "working_tree_modified": working["dirty"], "variant": args.variant,
                "connections": args.connections, "rounds": args.rounds, "seconds": args.seconds,
                "engine": (f"sim, vllm dialect, {_steps(args.engine_step_ms)}, core 1" if args.engine == "sim"
                           else "nginx stand-in (fixed vLLM body)"), "mode": args.mode,
                "load": "wrk, closed loop, keep-alive",
                "gateway": f"pinned to core {GATEWAY_CORE}"}
    summary = summarize(rows, base_label, args.connections)
    write_json(args.out, {"settings": settings, "machine": machine, "summary": summary, "runs": rows})
    plot({"settings": settings, "runs": rows}, args.out.with_suffix(".png"))
    for connections, entry in summary.items():
        paired = entry["paired"]
        print(f"{connections}: CPU per request {entry[base_label]['gateway_cpu_ms_per_request']:.3f} -> "
              f"{entry[WORKING]['gateway_cpu_ms_per_request']:.3f} ms, paired median "
              f"{100 * paired['cpu_relative_difference_median']:+.1f}% (working tree lower in "
              f"{paired['rounds_working_tree_used_less_cpu']} of {paired['rounds']} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
