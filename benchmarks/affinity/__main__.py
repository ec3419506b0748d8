"""``python -m benchmarks.affinity``: the cache-affinity routing benchmark (issue 4).

    python -m benchmarks.affinity run [--quick] [--regimes NAME ...] [--policies NAME ...]
        [--no-kill | --kill-only] [--rates R ...] [--option POLICY.OPTION=VALUE ...]
        [--kill-victims hottest other] [--kill-seconds BEFORE AFTER] [--measure-s S]
        [--out benchmarks/results/affinity.json]
    python -m benchmarks.affinity probe --regime NAME --rates R [R ...] [--measure-s 8]
    python -m benchmarks.affinity vllm [--requests 60] [--out benchmarks/results/affinity_vllm.json]
    python -m benchmarks.affinity plot [benchmarks/results/affinity.json]
    python -m benchmarks.affinity targets [benchmarks/results/affinity.json]

``run`` writes the JSON and its PNGs (``affinity.png``, ``affinity_kill.png`` beside it); ``probe`` runs
round robin alone at the given rates (to find its saturation, which sets each regime's rates) and writes
``affinity_probe.json``; ``vllm`` is the small comparison on two real vLLM CPU servers; ``targets``
re-checks a results file's targets with the current definitions (the kill test's measures recomputed from
its stored request timeline) and rewrites them in place, saying when and at which commit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.affinity.analysis import kill_moves
from benchmarks.affinity.kill import run_kill
from benchmarks.affinity.matrix import run_regime, stderr_log
from benchmarks.affinity.plots import plot_kill, plot_matrix
from benchmarks.affinity.report import build_document
from benchmarks.affinity.settings import (
    BACKEND_HEADER,
    POLICIES,
    BenchSettings,
    full_settings,
    quick_settings,
)
from benchmarks.affinity.targets import check_targets
from benchmarks.loadgen.results import git_state, machine_info, write_json

RESULTS = Path(__file__).resolve().parents[1] / "results"


async def run_benchmark(settings: BenchSettings, out: Path, log_dir: Path, plot: bool = True,
                        matrix: bool = True) -> dict[str, Any]:
    """The matrix (unless ``matrix`` is false: the kill test alone), the kill test, the JSON, the PNGs."""
    started = time.monotonic()
    load_start = os.getloadavg()
    regimes = [await run_regime(settings, regime, log_dir) for regime in settings.regimes] if matrix else []
    victims = settings.kill.victims if settings.kill is not None else ()
    kills = [await run_kill(settings, victim, log_dir) for victim in victims]
    document = build_document(settings, regimes, kills, started, time.monotonic(), load_start)
    write_json(out, document)
    stderr_log(f"wrote {out} ({document['wall_s']:.0f} s)")
    if plot:
        write_plots(document, out)
    log_targets(document)
    return document


def log_targets(document: dict[str, Any]) -> None:
    for target in document["targets"]:
        stderr_log(f"target {'MET' if target['met'] else 'NOT MET' if target['met'] is False else '?'}: "
                   f"{target['target']}")


def recheck_targets(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with its kill measures recomputed from the stored timelines and its targets re-checked."""
    settle_s = (document["settings"].get("kill") or {}).get("settle_s", 2.0)
    kills = []
    for kill in document.get("kills") or []:
        moves, baseline = kill_moves(kill, BACKEND_HEADER, settle_s)
        kills.append({**kill, "tenant_moves": moves, "baseline_moves_without_kill": baseline})
    runs = [run for regime in document["regimes"] for run in regime["runs"]]
    return {**document, "kills": kills, "targets": check_targets(runs, kills),
            "targets_rechecked": {"at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                  "git": git_state()}}


def write_plots(document: dict[str, Any], out: Path) -> None:
    if document["regimes"]:
        stderr_log(f"wrote {plot_matrix(document, out.with_suffix('.png'))}")
    if document.get("kills"):
        stderr_log(f"wrote {plot_kill(document['kills'], out.with_name(out.stem + '_kill.png'))}")


def settings_from(args: argparse.Namespace) -> BenchSettings:
    settings = quick_settings() if args.quick else full_settings()
    if args.regimes:
        settings = replace(settings, regimes=tuple(settings.regime(name) for name in args.regimes))
    if args.policies:
        settings = replace(settings, policies=tuple(args.policies))
    if args.no_kill:
        settings = replace(settings, kill=None)
    if args.measure_s:
        settings = replace(settings, timing=replace(settings.timing, measure_s=args.measure_s))
    if args.rates:
        settings = replace(settings, regimes=tuple(replace(r, rates=tuple(sorted(args.rates)))
                                                   for r in settings.regimes))
    if args.option:
        settings = replace(settings, gateway_overrides={"routing": {"options": policy_options(args.option)}})
    if args.kill_victims and settings.kill is not None:
        settings = replace(settings, kill=replace(settings.kill, victims=tuple(args.kill_victims)))
    if args.kill_seconds and settings.kill is not None:
        before_s, after_s = args.kill_seconds
        settings = replace(settings, kill=replace(settings.kill, before_s=before_s, after_s=after_s))
    return settings


def policy_options(items: Sequence[str]) -> dict[str, dict[str, float]]:
    """``POLICY.OPTION=VALUE`` items as the gateway's ``routing.options``."""
    options: dict[str, dict[str, float]] = {}
    for item in items:
        key, _, value = item.partition("=")
        policy, _, option = key.partition(".")
        if not value or not option:
            raise SystemExit(f"--option wants POLICY.OPTION=VALUE, got {item!r}")
        options.setdefault(policy, {})[option] = float(value)
    return options


def probe_settings(args: argparse.Namespace) -> BenchSettings:
    base = full_settings()
    regime = replace(base.regime(args.regime), rates=tuple(sorted(args.rates)))
    return replace(base, regimes=(regime,), policies=tuple(args.policies), kill=None,
                   timing=replace(base.timing, measure_s=args.measure_s))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.affinity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the sim matrix and the kill test")
    run.add_argument("--quick", action="store_true", help="one rate per regime, shorter runs")
    run.add_argument("--regimes", nargs="+", help="regime names (default: all)")
    run.add_argument("--policies", nargs="+", choices=POLICIES)
    run.add_argument("--no-kill", action="store_true")
    run.add_argument("--kill-only", action="store_true", help="only the kill test")
    run.add_argument("--measure-s", type=float, help="seconds of traffic per measured run")
    run.add_argument("--rates", type=float, nargs="+", help="override every selected regime's rates")
    run.add_argument("--option", nargs="+", metavar="POLICY.OPTION=VALUE",
                     help="policy options for the gateway, e.g. prefix_affinity.load_factor=1.5")
    run.add_argument("--kill-victims", nargs="+", choices=["hottest", "other"])
    run.add_argument("--kill-seconds", type=float, nargs=2, metavar=("BEFORE", "AFTER"),
                     help="traffic before and after the kill (default 60 60); shorter runs compare fewer "
                          "tenants, so one run's result is noisier")
    run.add_argument("--out", type=Path, default=RESULTS / "affinity.json")
    probe = commands.add_parser("probe", help="round robin alone at several rates (saturation)")
    probe.add_argument("--regime", required=True)
    probe.add_argument("--rates", type=float, nargs="+", required=True)
    probe.add_argument("--policies", nargs="+", choices=POLICIES, default=["round_robin"])
    probe.add_argument("--measure-s", type=float, default=8.0)
    probe.add_argument("--out", type=Path, default=RESULTS / "affinity_probe.json")
    vllm = commands.add_parser("vllm", help="round_robin vs prefix_affinity on 2 real vLLM CPU servers")
    vllm.add_argument("--requests", type=int, default=60)
    vllm.add_argument("--out", type=Path, default=RESULTS / "affinity_vllm.json")
    plot = commands.add_parser("plot", help="redraw the PNGs of a results file")
    plot.add_argument("results", type=Path, nargs="?", default=RESULTS / "affinity.json")
    targets = commands.add_parser("targets", help="re-check a results file's targets in place")
    targets.add_argument("results", type=Path, nargs="?", default=RESULTS / "affinity.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="affinity-logs-"))
    if args.command == "run":
        asyncio.run(run_benchmark(settings_from(args), args.out, log_dir, matrix=not args.kill_only))
    elif args.command == "probe":
        settings = probe_settings(args)
        load_start = os.getloadavg()
        started = time.monotonic()
        regime = asyncio.run(run_regime(settings, settings.regimes[0], log_dir))
        write_json(args.out, {"settings": settings.to_json(), "machine": machine_info(), "regime": regime,
                              "loadavg_start": list(load_start), "wall_s": time.monotonic() - started})
        stderr_log(f"wrote {args.out}")
    elif args.command == "vllm":
        from benchmarks.affinity.vllm_real import run_vllm_comparison

        document = asyncio.run(run_vllm_comparison(args.requests, log_dir))
        write_json(args.out, document)
        stderr_log(f"wrote {args.out}")
    elif args.command == "targets":
        document = recheck_targets(json.loads(args.results.read_text()))
        write_json(args.results, document)
        log_targets(document)
    else:
        document = json.loads(args.results.read_text())
        write_plots(document, args.results)
    print(f"logs in {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
