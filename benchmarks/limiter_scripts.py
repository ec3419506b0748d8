"""What the limiter's Lua scripts cost Redis, per request, alone and merged: the ``admit`` and ``settle``
scripts (gateway/tenancy/lua.py) called with 1, 2, 4, 8 and 16 requests per call, as the limiter sends
them when that many admissions or settlements on one key's limits travel in one batch
(gateway/tenancy/script_batch.py).

Why: one Redis runs every script of a gateway fleet on one thread, so its CPU per request is what caps
the fleet's full pipeline (``benchmarks.workers --worker-counts 1,2,4,8`` on 16 cores: 0.96-0.98 of a
core at 8 workers before merging). Measured on a private redis-server (never the shared one), from its
own ``INFO commandstats`` (microseconds inside EVALSHA, the scripts' commands included; the socket
I/O around them is not in it), over ``--requests`` requests per case, the cases interleaved over
``--passes`` passes; limits as the overhead benchmark's full pipeline (requests and tokens per
minute, far from refusing). Writes JSON and a PNG. Run: ``python -m benchmarks.limiter_scripts``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from benchmarks.limiter_latency import start_redis
from gateway.tenancy import lua

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("bench:rpm", "bench:tpm", "bench:ledger")
LIMITS = (1, 10_000_000, 60_000_000, 2, 70_000_000, 60_000_000)  # kind, capacity, window_us each
SIZES = (1, 2, 4, 8, 16)
PIPELINE_DEPTH = 100  # calls per round trip, so the client keeps Redis busy


def request_args(script: str, index: int) -> list[str | int]:
    """One request's values in the script's ARGV (after the count, before the limits)."""
    if script == "admit":  # lease id, ttl, prompt, completion, clamp, min completion
        return [f"lease-{index}", 60_000_000, 86, 16, 1, 1]
    return [f"lease-{index}", -3, int(time.time() * 1e6)]  # lease id, delta, admitted_us


def measure(client: redis.Redis, shas: dict[str, str], script: str, size: int,
            requests: int) -> dict[str, Any]:
    """One case; settlements refund into buckets that exist (one admission made them, uncounted)."""
    client.flushall()
    if script == "settle":
        client.evalsha(shas["admit"], len(KEYS), *KEYS, 1, *request_args("admit", -1), *LIMITS)
    client.config_resetstat()
    sha = shas[script]
    calls = max(1, requests // size)
    pipe = client.pipeline(transaction=False)
    for call in range(calls):
        args: list[str | int] = [size]
        for member in range(size):
            args += request_args(script, call * size + member)
        pipe.evalsha(sha, len(KEYS), *KEYS, *args, *LIMITS)
        if call % PIPELINE_DEPTH == PIPELINE_DEPTH - 1:
            pipe.execute()
    pipe.execute()
    stats = client.info("commandstats")["cmdstat_evalsha"]
    if stats["failed_calls"]:
        raise RuntimeError(f"{script} failed {stats['failed_calls']} of {stats['calls']} calls")
    return {"script": script, "requests_per_call": size, "calls": stats["calls"],
            "us_per_call": stats["usec"] / stats["calls"], "us_per_request": stats["usec"] / (calls * size)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for script in ("admit", "settle"):
        out[script] = {}
        for size in sorted({r["requests_per_call"] for r in rows}):
            mine = [r["us_per_request"] for r in rows
                    if r["script"] == script and r["requests_per_call"] == size]
            out[script][str(size)] = {"us_per_request_median": float(np.median(mine)),
                                      "us_per_request_min": min(mine), "us_per_request_max": max(mine)}
    alone = out["admit"]["1"]["us_per_request_median"] + out["settle"]["1"]["us_per_request_median"]
    out["admit_plus_settle_alone_us"] = alone
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for script, color in (("admit", "tab:blue"), ("settle", "tab:orange")):
        sizes = sorted(int(size) for size in results["summary"][script])
        ax.plot(sizes, [results["summary"][script][str(s)]["us_per_request_median"] for s in sizes], "o-",
                color=color, label=f"{script} (median of {results['settings']['passes']} passes)")
        for row in results["runs"]:
            if row["script"] == script:
                ax.plot(row["requests_per_call"], row["us_per_request"], ".", color=color, alpha=0.4)
    ax.set(xscale="log", xticks=list(SIZES), xticklabels=[str(s) for s in SIZES], ylim=(0, None),
           xlabel="requests per script call (merged in one batch)", ylabel="Redis CPU us per request")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("The limiter's scripts, Redis's own time (INFO commandstats)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16_000, help="requests per case and pass")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "limiter_scripts.json")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="limiter-scripts-")
    process, port = start_redis(workdir)
    results: dict[str, Any] = {
        "settings": {"requests": args.requests, "passes": args.passes, "keys": list(KEYS),
                     "limits": "requests_per_minute 10,000,000 and tokens_per_minute 70,000,000",
                     "pipeline_depth": PIPELINE_DEPTH,
                     "command": " ".join(["python -m benchmarks.limiter_scripts", *(argv or sys.argv[1:])])},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "runs": [],
    }
    client = redis.Redis(port=port)
    try:
        results["redis_version"] = client.info("server")["redis_version"]
        shas = {"admit": client.script_load(lua.ADMIT), "settle": client.script_load(lua.SETTLE)}
        for pass_no in range(args.passes):
            for size in SIZES:
                for script in shas:
                    row = measure(client, shas, script, size, args.requests)
                    results["runs"].append({"pass": pass_no, **row})
                    print(json.dumps(results["runs"][-1]), file=sys.stderr)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
