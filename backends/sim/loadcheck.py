"""A short load check: can one sim process serve N concurrent streams without being the bottleneck?

    python -m backends.sim.loadcheck [--streams 500] [--max-tokens 100] [--step-overhead 0.02]
                                     [--dialect vllm|tgi]

Starts one ``python -m backends.sim`` subprocess (max_num_seqs >= streams, so all run at once),
opens N streaming completions from one raw asyncio client in this process, counts SSE events, and reads
the sim's CPU time from ``/proc/<pid>/stat``. Prints one JSON line: events/s delivered, the sim's CPU
utilisation (1.0 = one core saturated), time to first event and errors. ``--step-overhead 0`` (the
``instant`` timing) measures the ceiling, where the sim's core is the limit by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, cast

import aiohttp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_ready(session: aiohttp.ClientSession, url: str,
                      process: subprocess.Popen[bytes] | None) -> None:
    for _ in range(600):
        if process is not None and process.poll() is not None:
            raise RuntimeError("the sim exited during startup")
        try:
            async with session.get(url + "/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError("the sim did not become ready")


class _StreamCounter(asyncio.Protocol):
    """One raw HTTP/1.1 streaming request; counts ``data:`` events with almost no per-byte work, so the
    client is not what limits the measurement."""

    def __init__(self, request: bytes, started: float) -> None:
        self.request = request
        self.started = started
        self.events = 0
        self.first = 0.0
        self.tail = b""
        self.done: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        window = self.tail + data
        found = window.count(b"data:")
        if found and not self.first:
            self.first = time.monotonic() - self.started
        self.events += found
        if b"\r\n0\r\n\r\n" in window and not self.done.done():
            self.done.set_result((self.events, self.first))
            assert self.transport is not None
            self.transport.close()
        self.tail = window[-6:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the end of the stream"))


async def _stream(port: int, path: str, body: dict[str, Any], started: float) -> tuple[int, float]:
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(lambda: _StreamCounter(request, started),
                                                        "127.0.0.1", port)
    return await protocol.done


def start_sim(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "backends.sim", "--dialect", args.dialect, "--port", str(port),
               "--max-num-seqs", str(max(args.streams, 256)), "--num-blocks", "65536",
               "--max-concurrent-requests", str(args.streams * 2),
               "--step-overhead", str(args.step_overhead), "--decode-per-seq", str(args.decode_per_seq)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def run_check(args: argparse.Namespace, process: subprocess.Popen[bytes] | None, pid: int | None,
                    port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        await _wait_ready(session, url, process)
    if args.dialect == "vllm":
        path = "/v1/completions"
        body: dict[str, Any] = {"prompt": "Load check prompt number", "max_tokens": args.max_tokens,
                                "ignore_eos": True, "stream": True}
    else:
        path = "/generate_stream"
        body = {"inputs": "Load check prompt number",
                "parameters": {"max_new_tokens": args.max_tokens, "ignore_eos": True}}
    cpu_before = _cpu_seconds(pid) if pid else 0.0
    client_before = time.process_time()
    started = time.monotonic()
    results = await asyncio.gather(*(_stream(port, path, body, started) for _ in range(args.streams)),
                                   return_exceptions=True)
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds(pid) - cpu_before if pid else 0.0
    client_cpu = time.process_time() - client_before
    ok = [r for r in results if isinstance(r, tuple)]
    events = sum(r[0] for r in ok)
    firsts = sorted(r[1] for r in ok)
    return {
        "dialect": args.dialect, "streams": args.streams, "max_tokens": args.max_tokens,
        "step_overhead_s": args.step_overhead, "decode_per_seq_s": args.decode_per_seq,
        "completed": len(ok), "errors": len(results) - len(ok), "events": events,
        "seconds": round(elapsed, 3), "events_per_s": round(events / elapsed), "sim_cpu_s": round(cpu, 3),
        "sim_cpu_utilisation": round(cpu / elapsed, 3),
        "sim_cpu_us_per_event": round(cpu / max(events, 1) * 1e6, 1),
        "client_cpu_utilisation": round(client_cpu / elapsed, 3),
        "first_event_p50_s": round(firsts[len(firsts) // 2], 4) if firsts else None,
        "first_event_max_s": round(firsts[-1], 4) if firsts else None,
        "machine_cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m backends.sim.loadcheck")
    parser.add_argument("--dialect", choices=["vllm", "tgi"], default="vllm")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--step-overhead", type=float, default=0.02,
                        help="engine step time in seconds (0: instant, the sim's ceiling)")
    parser.add_argument("--decode-per-seq", type=float, default=0.0)
    parser.add_argument("--port", type=int, help="load an already running server on this loopback port "
                                                  "instead of starting a sim")
    parser.add_argument("--pid", type=int, help="with --port: the server's PID, to read its CPU time")
    args = parser.parse_args()
    port = args.port or _free_port()
    process = None if args.port else start_sim(args, port)
    pid = process.pid if process is not None else args.pid
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            result = asyncio.run(run_check(args, process, pid, port))
        else:
            result = uvloop.run(run_check(args, process, pid, port))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
