"""``python -m backends.sim``: run one simulated engine.

    python -m backends.sim --dialect vllm|tgi --port P --model NAME [--profile instant|fast|vllm-cpu|gpu-8b]
        [--block-size N] [--num-blocks N] [--max-num-seqs N] [--max-num-batched-tokens N]
        [--max-model-len N] [--max-concurrent-requests N] [--fault SPEC] [--fault-count N] [--unhealthy]

Geometry and timing flags override the profile's values. ``--fault`` takes the ``x-sim-fault`` grammar
(see ``backends.sim.faults``) and applies to every request, or to the next ``--fault-count`` ones.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from backends.sim.app import run
from backends.sim.context import SimConfig
from backends.sim.faults import FaultSyntaxError, parse_fault
from backends.sim.profiles import DEFAULT_PROFILE, PROFILES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backends.sim",
                                     description="Simulated LLM engine speaking vLLM's or TGI's HTTP API.")
    parser.add_argument("--dialect", choices=["vllm", "tgi"], default="vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="sim-model", help="served model name")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE)
    geometry = parser.add_argument_group("engine geometry (override the profile)")
    geometry.add_argument("--block-size", type=int)
    geometry.add_argument("--num-blocks", type=int,
                          help="KV cache capacity in blocks (vLLM's num_gpu_blocks)")
    geometry.add_argument("--max-num-seqs", type=int)
    geometry.add_argument("--max-num-batched-tokens", type=int)
    geometry.add_argument("--max-model-len", type=int)
    timing = parser.add_argument_group("timing in seconds (override the profile)")
    timing.add_argument("--step-overhead", type=float)
    timing.add_argument("--prefill-per-token", type=float)
    timing.add_argument("--decode-per-seq", type=float)
    timing.add_argument("--decode-per-context-token", type=float)
    timing.add_argument("--frontend-latency", type=float)
    parser.add_argument("--max-concurrent-requests", type=int, default=128,
                        help="TGI dialect: more generations in flight are refused with 429 overloaded")
    faults = parser.add_argument_group("faults")
    faults.add_argument("--fault", help="x-sim-fault grammar, e.g. 'status=503' or 'drop-after=5;slow=0.1'")
    faults.add_argument("--fault-count", type=int, help="apply --fault to the next N requests only")
    faults.add_argument("--unhealthy", action="store_true", help="/health answers 503")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> SimConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    engine = PROFILES[args.profile].with_overrides(
        block_size=args.block_size, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        step_overhead=args.step_overhead, prefill_per_token=args.prefill_per_token,
        decode_per_seq=args.decode_per_seq, decode_per_context_token=args.decode_per_context_token,
        frontend_latency=args.frontend_latency)
    try:
        fault = parse_fault(args.fault) if args.fault else None
    except FaultSyntaxError as exc:
        parser.error(f"--fault: {exc}")
    return SimConfig(dialect=args.dialect, model=args.model, host=args.host, port=args.port,
                     profile=args.profile, engine=engine,
                     max_concurrent_requests=args.max_concurrent_requests,
                     fault=fault, fault_count=args.fault_count, unhealthy=args.unhealthy)


def main(argv: Sequence[str] | None = None) -> None:
    config = config_from_args(argv)
    logging.basicConfig(level=build_parser().parse_args(argv).log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
