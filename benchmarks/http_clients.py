"""Which HTTP client should the gateway use towards its engines? Client CPU per request and request rate,
measured under concurrency against a local sim engine (vllm dialect, instant profile, pinned to core 1).

Clients (each in its own subprocess pinned to core 0, on uvloop like the gateway): ``aiohttp`` (the
session as gateway/composition.py builds it), ``httpx`` (AsyncClient with unbounded pool limits),
``http1`` (backends/http1.py), and the two gateway transports end to end through ``VllmAdapter``
(``adapter-aiohttp``, ``adapter-http1``: SSE decoding and event parsing included). Workloads: a streamed
``POST /v1/completions`` (16 tokens, ``ignore_eos``: about 18 SSE events) read to its end, and a tiny
``GET /health``. Concurrency 1, 16 and 64; clients are interleaved round by round so that drift on a
shared machine hits them alike. CPU is the client process's ``time.process_time`` over each batch.

Run: ``python -m benchmarks.http_clients [--quick]``; writes benchmarks/results/http_clients.json and .png.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec

from backends.engine_http import AiohttpTransport, Http1Transport
from backends.http1 import Http1Client
from backends.launchers.process import ProcessLauncher, free_port
from backends.vllm import VllmAdapter
from gateway.types import GenerateRequest

MODEL = "sim-model"
RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = ("aiohttp", "httpx", "http1", "adapter-aiohttp", "adapter-http1")
CONCURRENCIES = (1, 16, 64)
MAX_TOKENS = 16
PROMPT = " ".join(["token"] * 64)
HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
BODY = msgspec.json.encode({"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True,
                            "ignore_eos": True, "stream_options": {"include_usage": True}})
CLIENT_CORE, ENGINE_CORE = 0, 1

Call = Callable[[], Awaitable[int]]  # one request; returns how many body chunks it read


# --- worker (one client, in its own process) -----------------------------------------------------

def aiohttp_calls(base: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=2.0)

    async def stream() -> int:
        response = await session.post(base + "/v1/completions", data=BODY, headers=HEADERS, timeout=timeout)
        chunks = 0
        while await response.content.readany():
            chunks += 1
        response.release()
        return chunks

    async def get() -> int:
        async with session.get(base + "/health", timeout=timeout) as response:
            await response.read()
        return 1

    return stream, get, session.close


def httpx_calls(base: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=30)
    client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=2.0))

    async def stream() -> int:
        chunks = 0
        async with client.stream("POST", base + "/v1/completions", content=BODY, headers=HEADERS) as response:
            async for _ in response.aiter_raw():
                chunks += 1
        return chunks

    async def get() -> int:
        (await client.get(base + "/health")).read()
        return 1

    return stream, get, client.aclose


def http1_calls(base: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    client = Http1Client(idle_s=30)

    async def stream() -> int:
        response = await client.request("POST", base + "/v1/completions", HEADERS, BODY, connect_timeout=2.0)
        chunks = 0
        while await response.read_chunk():
            chunks += 1
        return chunks

    async def get() -> int:
        await client.get(base + "/health", connect_timeout=2.0)
        return 1

    return stream, get, client.aclose


def adapter_calls(base: str, kind: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    transport: AiohttpTransport | Http1Transport
    if kind == "adapter-http1":
        transport = Http1Transport(Http1Client(idle_s=30))
    else:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
        transport = AiohttpTransport(aiohttp.ClientSession(connector=connector, auto_decompress=False))
    adapter = VllmAdapter(base, transport)
    request = GenerateRequest(kind="completion", model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS,
                              extra={"ignore_eos": True})

    async def stream() -> int:
        return sum([1 async for _ in adapter.stream(request)])

    async def get() -> int:
        assert await adapter.health()
        return 1

    return stream, get, transport.aclose


async def batch(call: Call, n: int, concurrency: int) -> tuple[float, float, int]:
    """(cpu seconds, wall seconds, chunks) for ``n`` calls by ``concurrency`` looping tasks."""
    remaining = n
    chunks = 0

    async def loop() -> None:
        nonlocal remaining, chunks
        while remaining > 0:
            remaining -= 1
            got = await call()
            chunks += got

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall, chunks


async def work(client: str, base: str, n: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    if client == "aiohttp":
        stream, get, close = aiohttp_calls(base)
    elif client == "httpx":
        stream, get, close = httpx_calls(base)
    elif client == "http1":
        stream, get, close = http1_calls(base)
    else:
        stream, get, close = adapter_calls(base, client)
    rows = []
    try:
        for concurrency in concurrencies:
            for mode, call in (("stream", stream), ("get", get)):
                await batch(call, max(50, n // 5), concurrency)  # warm: connections, caches
                cpu, wall, chunks = await batch(call, n, concurrency)
                rows.append({"client": client, "mode": mode, "concurrency": concurrency, "requests": n,
                             "cpu_s": cpu, "wall_s": wall, "chunks": chunks})
    finally:
        await close()
    return rows


def worker_main(client: str, base: str, n: int, concurrencies: list[int]) -> None:
    import uvloop

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CLIENT_CORE})
    rows = uvloop.run(work(client, base, n, concurrencies))
    print(json.dumps(rows))


# --- driver ---------------------------------------------------------------------------------------

def run_worker(client: str, base: str, n: int, concurrencies: tuple[int, ...]) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.http_clients", "--worker", client, "--url", base,
                           "--n", str(n), "--concurrency", ",".join(map(str, concurrencies))],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{client} worker failed:\n{done.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum the rounds per (client, mode, concurrency)."""
    totals: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["client"], row["mode"], row["concurrency"])
        total = totals.setdefault(key, {"client": key[0], "mode": key[1], "concurrency": key[2],
                                        "requests": 0, "cpu_s": 0.0, "wall_s": 0.0, "chunks": 0,
                                        "rounds_cpu_us": []})
        for name in ("requests", "cpu_s", "wall_s", "chunks"):
            total[name] += row[name]
        total["rounds_cpu_us"].append(round(1e6 * row["cpu_s"] / row["requests"], 1))
    out = []
    for total in totals.values():
        total["cpu_us_per_request"] = round(1e6 * total["cpu_s"] / total["requests"], 1)
        total["requests_per_s"] = round(total["requests"] / total["wall_s"], 1)
        total["chunks_per_request"] = round(total["chunks"] / total["requests"], 2)
        out.append(total)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = results["summary"]
    clients = results["settings"]["clients"]
    concurrencies = results["settings"]["concurrencies"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / len(clients)
    for col, mode in enumerate(("stream", "get")):
        for row, (field, label) in enumerate((("cpu_us_per_request", "client CPU µs / request"),
                                              ("requests_per_s", "requests / s"))):
            ax = axes[row][col]
            for i, client in enumerate(clients):
                values = [next(s[field] for s in summary if s["client"] == client and s["mode"] == mode
                               and s["concurrency"] == c) for c in concurrencies]
                bars = ax.bar(np.arange(len(concurrencies)) + i * width, values, width, label=client)
                ax.bar_label(bars, fmt="%.0f", fontsize=6)
            ax.set_xticks(np.arange(len(concurrencies)) + width * (len(clients) - 1) / 2,
                          [f"c={c}" for c in concurrencies])
            title = "streamed POST /v1/completions (16 tokens)" if mode == "stream" else "GET /health"
            ax.set(ylabel=label, title=title)
            ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Upstream HTTP clients on one pinned core vs a sim engine ({results['machine']['cpus']} "
                 f"shared cores, uvloop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--out", default=str(RESULTS / "http_clients.json"))
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=600, help="requests per batch")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if args.worker:
        worker_main(args.worker, args.url, args.n, list(concurrencies))
        return 0
    n, rounds = (200, 1) if args.quick else (args.n, 3)
    log_dir = Path(tempfile.mkdtemp(prefix="http-clients-"))
    port = free_port()
    command = ["taskset", "-c", str(ENGINE_CORE), sys.executable, "-m", "backends.sim", "--dialect", "vllm",
               "--model", MODEL, "--profile", "instant", "--max-num-seqs", "512", "--port", str(port)]
    engine = ProcessLauncher("engine", command, port, log_path=log_dir / "engine.log")
    engine.start()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(engine.wait_healthy(60))
        for round_no in range(rounds):
            order = CLIENTS[round_no % len(CLIENTS):] + CLIENTS[:round_no % len(CLIENTS)]
            for client in order:
                got = run_worker(client, engine.url, n, concurrencies)
                rows += got
                print(json.dumps({"round": round_no, "client": client,
                                  "cpu_us": [round(1e6 * r["cpu_s"] / r["requests"]) for r in got]}),
                      file=sys.stderr)
    finally:
        engine.stop()
    results: dict[str, Any] = {
        "settings": {"clients": list(CLIENTS), "concurrencies": list(concurrencies),
                     "requests_per_batch": n, "rounds": rounds,
                     "stream": f"POST /v1/completions, stream, max_tokens {MAX_TOKENS}, ignore_eos, "
                               "include_usage, 64-word prompt, body read to its end",
                     "get": "GET /health (empty body)",
                     "engine": f"sim, vllm dialect, instant profile, pinned to core {ENGINE_CORE}",
                     "client": f"one subprocess per client, uvloop, pinned to core {CLIENT_CORE}; CPU = "
                               "process_time of the client process over each batch (warm-up excluded)"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_end": os.getloadavg(),
                    "duration_s": round(time.perf_counter() - started, 1)},
        "summary": summarize(rows),
        "rounds": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    summary: list[dict[str, Any]] = results["summary"]
    for s in summary:
        print(f"{s['mode']:6} c={s['concurrency']:<3} {s['client']:16} {s['cpu_us_per_request']:7.1f} µs "
              f"CPU/req {s['requests_per_s']:8.1f} req/s  {s['chunks_per_request']:5.2f} chunks/req")
    subprocess.run(["rm", "-rf", str(log_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
