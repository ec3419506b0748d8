"""Simulated engines as real subprocesses (``python -m backends.sim``) on free loopback ports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "sim-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sim(dialect: str, log_dir: Path, args: Sequence[str] = ()) -> SimProcess:
    port = free_port()
    log = log_dir / f"sim-{dialect}-{port}.log"
    command = [sys.executable, "-m", "backends.sim", "--dialect", dialect, "--model", MODEL,
               "--port", str(port), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    sim = SimProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sim exited early:\n{log.read_text()}")
        try:
            if httpx.get(sim.url + "/health", timeout=1).status_code in (200, 503):
                return sim
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sim.stop()
            raise TimeoutError("sim did not come up")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sim_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-logs")


@pytest.fixture(scope="session")
def launch_sim(sim_logs: Path) -> Callable[..., SimProcess]:
    """Start a dedicated sim: ``launch_sim("vllm", ["--flag", ...])``; the caller stops it."""
    def launch(dialect: str, args: Sequence[str] = ()) -> SimProcess:
        return start_sim(dialect, sim_logs, args)
    return launch


@pytest.fixture(scope="session")
def vllm_sim(sim_logs: Path) -> Iterator[str]:
    sim = start_sim("vllm", sim_logs, ["--max-model-len", "512", "--num-blocks", "64"])
    yield sim.url
    sim.stop()


@pytest.fixture(scope="session")
def tgi_sim(sim_logs: Path) -> Iterator[str]:
    sim = start_sim("tgi", sim_logs, ["--max-model-len", "512", "--num-blocks", "64"])
    yield sim.url
    sim.stop()


@pytest.fixture(scope="session")
def slow_vllm_sim(sim_logs: Path) -> Iterator[str]:
    """50 tokens/s per step: long enough to disconnect mid-generation."""
    sim = start_sim("vllm", sim_logs, ["--step-overhead", "0.02"])
    yield sim.url
    sim.stop()


@pytest.fixture(scope="session")
def slow_tgi_sim(sim_logs: Path) -> Iterator[str]:
    sim = start_sim("tgi", sim_logs, ["--step-overhead", "0.02", "--max-concurrent-requests", "2"])
    yield sim.url
    sim.stop()


class SSE:
    """A deliberately naive SSE reader: events split on blank lines, ``data:`` with or without space."""

    @staticmethod
    def data(body: str) -> list[str]:
        events = []
        for block in body.split("\n\n"):
            for line in block.split("\n"):
                if line.startswith("data:"):
                    events.append(line[5:].lstrip(" "))
        return events

    def json(self, body: str) -> list[Any]:
        return [json.loads(data) for data in self.data(body) if data != "[DONE]"]


@pytest.fixture
def sse() -> SSE:
    return SSE()
