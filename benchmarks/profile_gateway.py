"""Where the gateway's CPU goes: sample its stacks with py-spy while the overhead benchmark's load runs.

Starts a sim engine (instant steps) pinned to core 1 and the gateway pinned to core 0 with the full
pipeline (API keys, Redis limits, prefix_affinity, metrics, logs) or with it off, sends a warm-up batch,
then records the gateway with ``py-spy record --native --format raw`` during one batch of non-stream or
stream requests. Only the event loop's thread counts (the logging listener thread is left out), and
samples waiting in epoll are idle, left out too. Each sample is attributed to the part of the gateway
that owns its innermost recognised Python frame (server, upstream client, adapters, pipeline, limits,
routing, metrics, event loop...; asyncio's frames count for their caller), so native work (a socket
write, hiredis, httptools) counts for the Python code that asked for it. ``--native`` matters: without
it py-spy loses the coroutine frames run from uvloop's callbacks in about half the samples and shows
them as the loop's own time (the previous profile's "50% event loop" was mostly that). Writes
``benchmarks/results/profile_<pipeline>_<mode>[_c<concurrency>].json`` (the breakdown, the top
functions by own samples, the collapsed stacks' path; the concurrency is named when not 16) and
prints a summary.

``--engine-step-ms`` gives the engine's steps a duration, so a stream's events come one by one as from a
real engine instead of in bursts.

Run: ``python -m benchmarks.profile_gateway [--pipeline full|off] [--stream] [--requests N]
[--concurrency C] [--engine-step-ms MS]``.
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
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from backends.launchers.process import free_port
from benchmarks.overhead import (
    RESULTS,
    batch,
    drop_redis_keys,
    gateway_config,
    sim_engine_command,
    start,
)

# Innermost frame first wins: the first rule whose marker is in a frame's file path names the part.
PARTS: tuple[tuple[str, str], ...] = (
    ("gateway/tenancy/", "limits and keys"),
    ("redis/", "limits and keys"),
    ("policies/", "routing"),
    ("prometheus_client/", "metrics"),
    ("gateway/metrics", "metrics"),
    ("backends/sse", "upstream SSE parse"),
    ("backends/openai_stream", "upstream SSE parse"),
    ("backends/tgi_stream", "upstream SSE parse"),
    ("backends/", "adapters and upstream client"),
    ("aiohttp/", "adapters and upstream client"),
    ("yarl/", "adapters and upstream client"),
    ("multidict/", "adapters and upstream client"),
    ("gateway/relay", "relay and render"),
    ("gateway/render", "relay and render"),
    ("gateway/client_schemas", "request parse"),
    ("msgspec/", "request parse"),
    ("gateway/dataplane", "data plane (ASGI)"),
    ("gateway/pipeline", "pipeline and forwarder"),
    ("gateway/forwarder", "pipeline and forwarder"),
    ("gateway/registry", "pipeline and forwarder"),
    ("gateway/http_protocol", "HTTP server (uvicorn)"),
    ("gateway/", "gateway other"),
    ("uvicorn/", "HTTP server (uvicorn)"),
    ("httptools/", "HTTP server (uvicorn)"),
    ("logging/", "logging"),
    ("uvloop/", "event loop and socket I/O (uvloop, native)"),
)
# asyncio's frames belong to whoever called them (redis-py's streams, aiohttp's timeouts...); a sample
# with nothing but asyncio above uvloop's native frames is the loop itself (epoll results, reads
# dispatched to protocols, callbacks).
LOOP = "event loop and socket I/O (uvloop, native)"
# Like asyncio's, these helpers' frames count for their caller.
PASS_THROUGH = ("gateway/loop_bound",)
IDLE_LEAVES = ("epoll_pwait", "epoll_wait")
OTHER_THREAD = "Thread._bootstrap"


def frame_path(frame: str) -> str:
    """``"func (package/module.py:12)"`` -> ``"package/module.py"``."""
    inside = frame.rpartition("(")[2]
    return inside.rpartition(":")[0]


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        path = frame_path(frame)
        if path.startswith(PASS_THROUGH):
            continue
        for marker, part in PARTS:
            if path.startswith(marker):
                return part
    if all(frame_path(frame).startswith(("asyncio/", "<frozen", "runpy")) or "(" not in frame
           for frame in stack[1:]):
        return LOOP
    return "other"


def summarize(collapsed: Path, top: int = 25) -> dict[str, Any]:
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit() or OTHER_THREAD in stack_text:
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        if any(frame.startswith(IDLE_LEAVES) for frame in stack[-3:]):
            idle += count
            continue
        total += count
        parts[part_of(stack)] += count
        own[stack[-1]] += count
    scale = 100 / total if total else 0.0
    return {
        "samples": total,
        "idle_samples_left_out": idle,
        "parts_percent": {part: round(n * scale, 1) for part, n in parts.most_common()},
        "top_own_percent": [[frame, round(n * scale, 1)] for frame, n in own.most_common(top)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", choices=("full", "off"), default="full")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--engine-step-ms", type=float, default=0.0,
                        help="each engine step takes this long (0: instant steps: events in bursts)")
    args = parser.parse_args(argv)
    mode = "stream" if args.stream else "non-stream"
    # The recorded profiles are at the default concurrency and instant steps; others get their own file.
    name = (f"profile_{args.pipeline}_{mode}" + ("" if args.concurrency == 16 else f"_c{args.concurrency}")
            + (f"_steps{args.engine_step_ms:g}ms" if args.engine_step_ms else ""))
    log_dir = Path(tempfile.mkdtemp(prefix="profile-"))
    engine_port = free_port()
    engine = start("engine", sim_engine_command(engine_port, args.engine_step_ms / 1000), engine_port,
                   log_dir, core=1)
    try:
        config, api_key = gateway_config(engine.url, args.pipeline == "full", f"profile-{os.getpid()}:")
        config_path = log_dir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path),
                   "--port", str(port)]
        gateway = start("gateway", command, port, log_dir, core=0)
        try:
            assert gateway.process is not None
            asyncio.run(batch(gateway.url, 200, args.concurrency, args.stream, 0, api_key))
            collapsed = RESULTS / f"{name}.collapsed.txt"
            # --native needs py-spy to pause the process for each sample (no --nonblocking).
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--native",
                                    "--pid", str(gateway.process.pid), "--rate", str(args.rate),
                                    "--format", "raw", "--output", str(collapsed)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            started = time.perf_counter()
            records = asyncio.run(batch(gateway.url, args.requests, args.concurrency, args.stream, 1,
                                        api_key))
            wall = time.perf_counter() - started
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            spy.wait(30)
        finally:
            gateway.stop()
    finally:
        engine.stop()
        drop_redis_keys(f"profile-{os.getpid()}:")
    summary = summarize(collapsed)
    result = {
        "settings": {"pipeline": args.pipeline, "mode": mode, "requests": args.requests,
                     "concurrency": args.concurrency, "py_spy_rate": args.rate,
                     "engine_step_ms": args.engine_step_ms,
                     "workload": "uniform, 64 words in, 16 tokens out, ignore_eos"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "failed": sum(not r.success for r in records),
        "wall_s": wall,
        "collapsed_stacks": collapsed.name,
        **summary,
    }
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("samples", "parts_percent")}, indent=2))
    for frame, percent in result["top_own_percent"][:15]:
        print(f"{percent:5.1f}%  {frame}")
    subprocess.run(["rm", "-rf", str(log_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
