"""A closed-loop load that costs the machine little: ``wrk`` (C, one thread, N keep-alive connections)
posting non-stream completions with varied prompts, counting answers by status and by the gateway
worker that served them (``x-llm-gateway-worker``).

Why beside the Python load generator (``benchmarks.loadgen``, which implements the field's metric
definitions): that one spends ~0.2 ms of CPU per request, more than the gateway, so on a 2-core
machine it takes the cores a second gateway worker would need; wrk with this script spends ~0.03 ms
(``results/workers_stand_ins_*.json``, ``loadgen_cpu_ms_per_request``). wrk measures only throughput and
latency percentiles, which is all a scaling run needs. Needs ``wrk`` on PATH (Debian: ``apt-get
install wrk``).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WORKER_HEADER = "x-llm-gateway-worker"

# Lua for wrk: cycles through pre-built bodies; ``done`` prints one JSON line per counter table, read
# back by ``parse_report``. Counters live in the thread's Lua state, so ``done`` fetches them from
# each thread (``thread:get`` copies tables).
_SCRIPT = """
local bodies = {%(bodies)s}
local headers = {%(headers)s}
local next_body = 0
statuses = {}
workers = {}
request = function()
  next_body = next_body %% #bodies + 1
  return wrk.format("POST", "%(path)s", headers, bodies[next_body])
end
response = function(status, response_headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  local worker = response_headers["%(worker_header)s"] or "none"
  workers[worker] = (workers[worker] or 0) + 1
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
local function dump(name, counts)
  local parts = {}
  for key, value in pairs(counts) do table.insert(parts, string.format('"%%s": %%d', key, value)) end
  io.write(string.format('WRK-JSON {"%%s": {%%s}}\\n', name, table.concat(parts, ", ")))
end
done = function(summary, latency, requests)
  local statuses_all, workers_all = {}, {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("statuses")) do statuses_all[key] = (statuses_all[key] or 0) + n end
    for key, n in pairs(thread:get("workers")) do workers_all[key] = (workers_all[key] or 0) + n end
  end
  dump("statuses", statuses_all)
  dump("workers", workers_all)
  local errors = summary.errors
  io.write(string.format('WRK-JSON {"summary": {"requests": %%d, "duration_us": %%d, "connect_errors": %%d, '
    .. '"read_errors": %%d, "write_errors": %%d, "timeouts": %%d, "latency_p50_us": %%d, '
    .. '"latency_p99_us": %%d}}\\n', summary.requests, summary.duration, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class WrkReport:
    requests: int
    duration_s: float
    statuses: dict[str, int]
    workers: dict[str, int]
    socket_errors: int
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("2"))

    @property
    def failed(self) -> int:
        return self.requests - self.ok + self.socket_errors


def _lua_string(text: str) -> str:
    level = "=" * 4
    if f"]{level}]" in text:
        raise ValueError("body holds the Lua long-string terminator")
    return f"[{level}[{text}]{level}]"


def wrk_script(bodies: list[bytes], path: str, headers: dict[str, str]) -> str:
    if not bodies:
        raise ValueError("wrk needs at least one body")
    return _SCRIPT % {
        "bodies": ", ".join(_lua_string(b.decode()) for b in bodies),
        "headers": ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()),
        "path": path, "worker_header": WORKER_HEADER}


def write_completions_script(path: Path, bodies: list[bytes], api_key: str | None) -> Path:
    """The script posting ``bodies`` to ``/v1/completions`` (with ``api_key`` as a bearer key if given)."""
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    path.write_text(wrk_script(bodies, "/v1/completions", headers))
    return path


def parse_report(stdout: str) -> WrkReport:
    """The counters the script's ``done`` printed; ValueError when wrk printed none (it failed)."""
    found: dict[str, dict[str, int]] = {}
    for line in stdout.splitlines():
        if line.startswith("WRK-JSON "):
            found.update(json.loads(line.removeprefix("WRK-JSON ")))
    if "summary" not in found:
        raise ValueError(f"wrk printed no report: {stdout[-500:]!r}")
    summary = found["summary"]
    return WrkReport(
        requests=summary["requests"], duration_s=summary["duration_us"] / 1e6,
        statuses=found.get("statuses", {}), workers=found.get("workers", {}),
        socket_errors=sum(summary[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        latency_p50_ms=summary["latency_p50_us"] / 1000, latency_p99_ms=summary["latency_p99_us"] / 1000)


def wrk_command(url: str, script: Path, connections: int, seconds: float, threads: int = 1) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk)")
    if not re.fullmatch(r"http://[^/]+", url):
        raise ValueError(f"wrk wants the server's base URL, not {url!r}")
    return [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script), url]


def run_wrk(url: str, script: Path, connections: int, seconds: float,
            threads: int = 1) -> tuple[WrkReport, float]:
    """Run wrk to its end: its report and the CPU seconds it used (from the rusage of this process's
    waited-for children, so wrk must be the only child that ends meanwhile)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(wrk_command(url, script, connections, seconds, threads), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stdout[-500:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_report(done.stdout), cpu
