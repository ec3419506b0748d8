"""``python -m benchmarks``: the load generator's command line.

    python -m benchmarks run --url URL [--model M] [--api completions|chat]
        --workload shared-prefix|random|trace [workload options]
        [--rate R [R ...]] [--burstiness B] [--num-requests N] [--max-concurrency C] [--seed S]
        [--ignore-eos] [--goodput ttft:MS tpot:MS e2el:MS] [--out benchmarks/results/NAME.json] [--plot]
    python -m benchmarks plot RESULTS.json [--out PNG]

Several ``--rate`` values make a sweep: one run per rate, all in one JSON. Run ``i`` of a sweep uses
seed ``S + i`` for its requests and arrivals (so an engine's prefix cache cannot serve one rate's
prompts from the previous rate); shared-prefix tenants keep the prefixes of seed ``S``.
Closed loop: ``--rate inf --max-concurrency C``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen.arrivals import ArrivalProcess
from benchmarks.loadgen.metrics import SLO_METRICS
from benchmarks.loadgen.plots import plot_results
from benchmarks.loadgen.progress import Progress
from benchmarks.loadgen.results import build_document, load_json, machine_info, run_entry, write_json
from benchmarks.loadgen.runner import run_load
from benchmarks.workloads import SharedPrefixWorkload, TraceWorkload, UniformRandomWorkload, Workload


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("a rate must be positive (or inf)")
    return value


def _pair(text: str, separator: str) -> tuple[str, str]:
    key, found, value = text.partition(separator)
    if not found or not key:
        raise argparse.ArgumentTypeError(f"expected KEY{separator}VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark (one run per --rate)")
    run.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    run.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    run.add_argument("--api", choices=["completions", "chat"], default="completions")
    run.add_argument("--no-stream", action="store_true", help="non-streamed requests (E2EL only)")
    run.add_argument("--workload", choices=["shared-prefix", "random", "trace"], default="random")
    run.add_argument("--rate", type=_rate, nargs="+", default=[math.inf],
                     help="requests/s; inf = all at once")
    run.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    run.add_argument("--no-normalize", action="store_true", help="do not rescale arrivals to N/rate")
    run.add_argument("--num-requests", type=int, default=100)
    run.add_argument("--max-concurrency", type=int)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--ignore-eos", action="store_true")
    run.add_argument("--goodput", nargs="+", default=[], metavar="METRIC:MS",
                     help=f"SLOs for goodput, METRIC in {SLO_METRICS}, milliseconds")
    run.add_argument("--header", nargs="+", default=[], metavar="NAME=VALUE")
    run.add_argument("--capture-header", nargs="+", default=[], metavar="NAME",
                     help="response headers to copy into each record")
    run.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY)")
    run.add_argument("--session-history", choices=["actual", "synthetic"], default="actual")
    run.add_argument("--keep-text", action="store_true", help="store generated text in the records")
    run.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results/loadgen.json"))
    run.add_argument("--plot", action="store_true", help="also write the PNG next to the JSON")
    run.add_argument("--no-progress", action="store_true")
    shape = run.add_argument_group("workload shape")
    shape.add_argument("--output-tokens", type=int, default=128)
    shape.add_argument("--tenants", type=int, default=64)
    shape.add_argument("--zipf", type=float, default=1.1)
    shape.add_argument("--prefix-words", type=int, default=2048)
    shape.add_argument("--suffix-words", type=int, default=128)
    shape.add_argument("--session-fraction", type=float, default=0.5)
    shape.add_argument("--min-turns", type=int, default=2)
    shape.add_argument("--max-turns", type=int, default=4)
    shape.add_argument("--max-open-sessions", type=int, default=16)
    shape.add_argument("--input-words", type=int, default=256)
    shape.add_argument("--range-ratio", type=float, default=0.0)
    shape.add_argument("--trace", type=Path, help="JSONL trace for --workload trace")
    shape.add_argument("--trace-timing", action="store_true", help="use the trace's timestamps as arrivals")
    plot = commands.add_parser("plot", help="plot a results JSON")
    plot.add_argument("results", type=Path)
    plot.add_argument("--out", type=Path, help="PNG path (default: the JSON's, with .png)")
    return parser


def build_workload(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Workload:
    if args.workload == "shared-prefix":
        return SharedPrefixWorkload(
            tenants=args.tenants, zipf_s=args.zipf, prefix_words=args.prefix_words,
            suffix_words=args.suffix_words, output_tokens=args.output_tokens,
            session_fraction=args.session_fraction, min_turns=args.min_turns, max_turns=args.max_turns,
            max_open_sessions=args.max_open_sessions, prefix_seed=args.seed)
    if args.workload == "random":
        return UniformRandomWorkload(input_words=args.input_words, output_tokens=args.output_tokens,
                                     range_ratio=args.range_ratio)
    if args.trace is None:
        parser.error("--workload trace needs --trace PATH")
    return TraceWorkload(args.trace, default_output_tokens=args.output_tokens)


def first_model(url: str) -> str:
    root = url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/v1/models", timeout=30) as response:
        models = json.load(response)["data"]
    return str(models[0]["id"])


async def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    workload = build_workload(args, parser)
    try:
        slos = {key: float(value) for key, value in (_pair(item, ":") for item in args.goodput)}
        headers = dict(_pair(item, "=") for item in args.header)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if unknown := set(slos) - set(SLO_METRICS):
        parser.error(f"unknown --goodput metric(s) {sorted(unknown)}; use {SLO_METRICS}")
    model = args.model or first_model(args.url)
    settings = {"url": args.url, "model": model, "api": args.api, "stream": not args.no_stream,
                "workload": workload.settings(), "rates": args.rate, "burstiness": args.burstiness,
                "normalize": not args.no_normalize, "num_requests": args.num_requests,
                "max_concurrency": args.max_concurrency, "seed": args.seed, "ignore_eos": args.ignore_eos,
                "goodput_slos_ms": slos, "header_names": sorted(headers),
                "session_history": args.session_history, "timeout_s": args.timeout}
    machine = machine_info()
    runs = []
    for i, rate in enumerate(args.rate):
        seed = args.seed + i
        arrival = ArrivalProcess(rate=rate, burstiness=args.burstiness, max_concurrency=args.max_concurrency,
                                 seed=seed, normalize=not args.no_normalize, use_timestamps=args.trace_timing)
        label = f"rate={rate:g}" + (f" c={args.max_concurrency}" if args.max_concurrency else "")
        with Progress(args.num_requests, label, enabled=not args.no_progress) as progress:
            result = await run_load(
                args.url, workload.generate(args.num_requests, seed), arrival, model=model, api=args.api,
                stream=not args.no_stream, ignore_eos=args.ignore_eos, extra_headers=headers,
                api_key=args.api_key, capture_headers=args.capture_header,
                session_history=args.session_history, keep_text=args.keep_text,
                request_timeout_s=args.timeout, on_progress=progress.callback())
        entry = run_entry(label, result, slos)
        runs.append(entry)
        print(summary_line(entry), file=sys.stderr)
    machine["loadavg_end"] = machine_info()["loadavg"]
    document = build_document(settings, runs, machine)
    write_json(args.out, document)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        print(f"wrote {plot_results(document, args.out.with_suffix('.png'))}", file=sys.stderr)
    return document


def summary_line(entry: dict[str, Any]) -> str:
    agg = entry["aggregate"]

    def ms(metric: str, stat: str) -> str:
        value = agg[metric][stat]
        return "-" if value is None else f"{value:.1f}"

    return (f"{entry['label']}: {agg['completed']}/{agg['requests']} ok in {agg['duration_s']:.1f} s, "
            f"{agg['request_throughput']:.2f} req/s, {agg['output_throughput']:.0f} out tok/s, "
            f"TTFT p50/p99 {ms('ttft_ms', 'p50')}/{ms('ttft_ms', 'p99')} ms, "
            f"TPOT p50 {ms('tpot_ms', 'p50')} ms, E2EL p50 {ms('e2el_ms', 'p50')} ms"
            + (f", goodput {agg['goodput']:.2f} req/s" if agg["goodput"] is not None else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        asyncio.run(run_command(args, parser))
    else:
        out = plot_results(load_json(args.results), args.out or args.results.with_suffix(".png"))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
