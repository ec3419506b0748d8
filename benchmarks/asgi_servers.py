"""Which ASGI server costs the gateway least: uvicorn (httptools, uvloop) against granian, and uvicorn
with the gateway's own protocol (``uvicorn-joined``: each response's head sent in one write with its
body, gateway/http_protocol.py), serving the same minimal raw ASGI app (a 100-byte JSON answer to a
POST), each pinned to core 0, driven by the gateway's own HTTP/1.1 client pinned to core 1 (closed loop,
keep-alive, concurrency 1, 16 and 64), the servers interleaved round by round.

``granian-rsgi`` serves the same answer over granian's own RSGI interface (``asgi_hello.rsgi_app``: no
ASGI message dicts), to measure what leaving ASGI would save.

Reported: server CPU ms per request (the server's whole process tree, from /proc) and requests per
second, per round and as medians over the rounds. granian is optional (``pip install -e '.[bench]'``);
without it only the uvicorn variants are measured. Writes benchmarks/results/asgi_servers.json and .png.
Run: ``python -m benchmarks.asgi_servers [--servers uvicorn uvicorn-joined granian granian-rsgi]
[--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backends.launchers.process import free_port

RESULTS = Path(__file__).resolve().parent / "results"
APP = "benchmarks.asgi_hello:app"
RSGI_APP = "benchmarks.asgi_hello:rsgi_app"
CLIENT = """
import asyncio, sys, uvloop
from backends.http1 import Http1Client
from benchmarks.asgi_hello import BODY
async def main(url, n, c):
    client = Http1Client()
    async def worker(k):
        for _ in range(k):
            response = await client.request("POST", url, body=b'{"prompt":"hi"}',
                                            headers={"content-type": "application/json"})
            if response.status != 200 or await response.read() != BODY:
                sys.exit(f"unexpected answer: status {response.status}")
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    await client.aclose()
uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


UVICORN_PROTOCOLS = {"uvicorn": "httptools", "uvicorn-joined": "gateway.http_protocol:GatewayHttpProtocol"}


def granian_path() -> str | None:
    """granian's executable (on PATH or beside this Python), or None where the ``bench`` extra is not
    installed."""
    beside = Path(sys.executable).with_name("granian")
    return shutil.which("granian") or (str(beside) if beside.exists() else None)


def server_command(server: str, port: int) -> list[str]:
    if server in UVICORN_PROTOCOLS:
        return [sys.executable, "-c",
                "import uvicorn; uvicorn.run('" + APP + f"', host='127.0.0.1', port={port}, "
                f"http='{UVICORN_PROTOCOLS[server]}',"
                " loop='uvloop', log_level='warning', access_log=False, proxy_headers=False)"]
    granian = granian_path() or "granian"
    interface, app = ("rsgi", RSGI_APP) if server == "granian-rsgi" else ("asgi", APP)
    return [granian, "--interface", interface, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--runtime-threads", "1", "--loop", "uvloop", "--log-level", "warning", "--no-ws", app]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (granian serves from a child process)."""
    pids, total = [pid], 0
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids += [int(child) for child in children]
    return total / os.sysconf("SC_CLK_TCK")


def drive(url: str, requests: int, concurrency: int, quiet: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run(["taskset", "-c", "1", sys.executable, "-c", CLIENT, url, str(requests), str(concurrency)],
                   check=True, stderr=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - started


def measure(server: str, requests: int, concurrencies: tuple[int, ...], round_index: int = 0
            ) -> list[dict[str, Any]]:
    port = free_port()
    process = subprocess.Popen(["taskset", "-c", "0", *server_command(server, port)])
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                drive(url, 16, 1, quiet=True)  # refused until the server listens
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        drive(url, 2000, 16)  # warm up
        rows = []
        for concurrency in concurrencies:
            before = tree_cpu_s(process.pid)
            wall = drive(url, requests, concurrency)
            cpu = tree_cpu_s(process.pid) - before
            rows.append({"server": server, "round": round_index, "concurrency": concurrency,
                         "requests": requests, "cpu_ms_per_request": 1000 * cpu / requests,
                         "requests_per_s": requests / wall})
            print(json.dumps(rows[-1]), file=sys.stderr)
        return rows
    finally:
        process.terminate()
        process.wait(10)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for server in sorted({r["server"] for r in rows}):
        points = sorted((r for r in rows if r["server"] == server), key=lambda r: r["concurrency"])
        ax.plot([r["concurrency"] for r in points], [r["cpu_ms_per_request"] for r in points], marker="o",
                label=server)
    ax.set(xscale="log", xlabel="concurrency", ylabel="server CPU ms / request",
           title="Minimal ASGI app, server pinned to one core")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--servers", nargs="+", choices=[*UVICORN_PROTOCOLS, "granian", "granian-rsgi"])
    parser.add_argument("--out", type=Path, default=RESULTS / "asgi_servers.json")
    args = parser.parse_args(argv)
    servers = args.servers or list(UVICORN_PROTOCOLS)
    if not args.servers and granian_path():
        servers += ["granian", "granian-rsgi"]
    load_start = os.getloadavg()
    runs = [row for round_index in range(args.rounds) for server in servers
            for row in measure(server, args.requests, (1, 16, 64), round_index)]
    summary = [{"server": server, "concurrency": concurrency,
                "cpu_ms_per_request": statistics.median(r["cpu_ms_per_request"] for r in group),
                "cpu_ms_per_request_range": [min(r["cpu_ms_per_request"] for r in group),
                                             max(r["cpu_ms_per_request"] for r in group)],
                "requests_per_s": statistics.median(r["requests_per_s"] for r in group)}
               for server in servers for concurrency in (1, 16, 64)
               for group in [[r for r in runs if r["server"] == server and r["concurrency"] == concurrency]]]
    result = {"settings": {"requests": args.requests, "rounds": args.rounds, "app": APP,
                           "client": "backends.http1, core 1", "servers": servers},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
              "runs": runs, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(summary, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
