"""Fixtures for the adapter contract suite: engine subprocesses on free loopback ports and the adapter
"targets" every contract test runs over.

Targets: ``vllm`` (``VllmAdapter`` over the sim engine in its vllm dialect), ``tgi`` (``TgiAdapter``
over the sim in its tgi dialect) and ``vllm-real`` (``VllmAdapter`` over the real vLLM CPU server,
the session's shared ``vllm_server`` from tests/conftest.py). Sims are started with
``python -m backends.sim``, waited for on ``/health`` (failing fast with the log's tail if the process
dies) and stopped by their own PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.engine_http import AdapterTimeouts, EngineTransport
from backends.tgi import TgiAdapter
from backends.vllm import VllmAdapter
from gateway.composition import build_transport

ROOT = Path(__file__).resolve().parents[2]
SIM_MODEL = "sim-contract"
Adapter = VllmAdapter | TgiAdapter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unreachable_url() -> str:
    """A loopback URL nothing listens on (a port bound then released)."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class EngineProcess:
    """A started engine subprocess."""

    dialect: str
    model: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL by PID: the engine dies without any goodbye (a crash)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_healthy(engine: EngineProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if engine.process.poll() is not None:
            raise RuntimeError(f"{engine.dialect} engine exited with {engine.process.returncode}:\n"
                               f"{engine.log_tail()}")
        try:
            with urllib.request.urlopen(engine.url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            engine.stop()
            raise TimeoutError(f"{engine.dialect} engine not healthy in {timeout_s}s:\n{engine.log_tail()}")
        time.sleep(0.05)


def start_sim(dialect: str, log_dir: Path, *args: str, model: str = SIM_MODEL) -> EngineProcess:
    port = free_port()
    log_path = log_dir / f"sim-{dialect}-{port}.log"
    command = [sys.executable, "-m", "backends.sim", "--dialect", dialect, "--port", str(port),
               "--model", model, *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    engine = EngineProcess(dialect, model, f"http://127.0.0.1:{port}", process, log_path)
    wait_healthy(engine)
    return engine


@pytest.fixture(scope="session")
def contract_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-logs")


@pytest.fixture(scope="session")
def sim_factory(contract_logs: Path) -> Iterator[Callable[..., EngineProcess]]:
    """Start extra sims (e.g. one to kill); all are stopped at the end of the session."""
    started: list[EngineProcess] = []

    def start(dialect: str, *args: str) -> EngineProcess:
        engine = start_sim(dialect, contract_logs, *args)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()


@pytest.fixture(scope="session")
def sim_vllm(sim_factory: Callable[..., EngineProcess]) -> EngineProcess:
    return sim_factory("vllm")


@pytest.fixture(scope="session")
def sim_tgi(sim_factory: Callable[..., EngineProcess]) -> EngineProcess:
    return sim_factory("tgi")


@dataclass
class Target:
    """One adapter over one engine, and what that engine can do."""

    name: str
    dialect: str
    model: str
    url: str
    make: Callable[[EngineTransport, AdapterTimeouts], Adapter]
    sim: bool  # honours x-sim-fault, deterministic resumable text
    checks_model: bool  # answers an unknown model with 404 (TGI serves one model and ignores the name)


def _target(name: str, dialect: str, model: str, url: str, sim: bool) -> Target:
    adapter_class = VllmAdapter if dialect == "vllm" else TgiAdapter

    def make(transport: EngineTransport, timeouts: AdapterTimeouts) -> Adapter:
        return adapter_class(url, transport, timeouts)

    return Target(name, dialect, model, url, make, sim, checks_model=dialect == "vllm")


@pytest.fixture(scope="session", params=[
    "vllm", "tgi", pytest.param("vllm-real", marks=[pytest.mark.vllm, pytest.mark.slow])])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "vllm":
        sim = request.getfixturevalue("sim_vllm")
        return _target("vllm", "vllm", sim.model, sim.url, sim=True)
    if request.param == "tgi":
        sim = request.getfixturevalue("sim_tgi")
        return _target("tgi", "tgi", sim.model, sim.url, sim=True)
    server = request.getfixturevalue("vllm_server")  # shared with tests/vllm (tests/conftest.py)
    return _target("vllm-real", "vllm", server.model, server.base_url, sim=False)


@pytest.fixture(params=["aiohttp", "http1"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[EngineTransport]:
    """Every contract test runs over both HTTP clients the gateway can use."""
    client: EngineTransport = build_transport(request.param)
    yield client
    await client.aclose()
