"""The process launcher: runs an engine as a local subprocess on a loopback port, waits for its health
endpoint, and stops it by its own PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the launching process dies, however it dies, so an
    engine never outlives the gateway that started it (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessLauncher:
    """One engine subprocess. ``command`` gets ``--port`` appended by ``sim_command``'s callers."""

    def __init__(self, name: str, command: Sequence[str], port: int, *, host: str = "127.0.0.1",
                 log_path: Path | None = None, env: dict[str, str] | None = None,
                 die_with_parent: bool = True, health_path: str = "/health") -> None:
        """``health_path``: the unauthenticated endpoint that answers 200 once the process serves."""
        self.name = name
        self.command = list(command)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.env = env
        self.die_with_parent = die_with_parent
        self.health_path = health_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, **(self.env or {})}
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None)

    async def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"engine {self.name} exited with code {self.process.returncode}"
                                       f" before becoming healthy ({self._log_hint()})")
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with session.get(f"{self.url}{self.health_path}",
                                           timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"engine {self.name} not healthy after {timeout_s:.0f}s"
                                       f" ({self._log_hint()})")
                await asyncio.sleep(0.05)

    def _log_hint(self) -> str:
        return f"log: {self.log_path}" if self.log_path else "no log kept"

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def sim_command(dialect: str, model: str, port: int, *, profile: str | None = None,
                extra_args: Sequence[str] = (), host: str = "127.0.0.1") -> list[str]:
    command = [sys.executable, "-m", "backends.sim", "--dialect", dialect, "--model", model,
               "--host", host, "--port", str(port)]
    if profile:
        command += ["--profile", profile]
    return command + list(extra_args)
