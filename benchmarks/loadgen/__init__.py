"""Streaming load generator for OpenAI-compatible servers (the gateway, an engine, another gateway).

Library use::

    from benchmarks.loadgen import ArrivalProcess, run_load
    from benchmarks.workloads import SharedPrefixWorkload

    workload = SharedPrefixWorkload(tenants=64, prefix_words=2048)
    result = await run_load("http://127.0.0.1:8000", workload.generate(500, seed=1),
                            ArrivalProcess(rate=4.0, seed=1), model="m", ignore_eos=True)
    result.records        # one RequestRecord per request (ttft, itl, e2el, usage tokens, error, ...)
    result.aggregate({"ttft": 500})   # throughputs, goodput, mean/std/p50/p90/p99 in ms

Metric definitions: reference/benchmarks.md (``timeline`` and ``metrics`` implement them).
"""

from benchmarks.loadgen.arrivals import ArrivalProcess, arrival_offsets
from benchmarks.loadgen.client import build_body, endpoint_url
from benchmarks.loadgen.metrics import aggregate, meets_slos, summarize_ms
from benchmarks.loadgen.records import RequestRecord
from benchmarks.loadgen.runner import RunResult, run_load
from benchmarks.loadgen.sse import SseDecoder
from benchmarks.loadgen.timeline import Outcome, StreamTimeline

__all__ = [
    "ArrivalProcess",
    "Outcome",
    "RequestRecord",
    "RunResult",
    "SseDecoder",
    "StreamTimeline",
    "aggregate",
    "arrival_offsets",
    "build_body",
    "endpoint_url",
    "meets_slos",
    "run_load",
    "summarize_ms",
]
