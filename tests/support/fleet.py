"""Real processes for end-to-end tests: sim engines and gateway servers on free loopback ports,
started as subprocesses and stopped by their own PID."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from backends.launchers.process import ProcessLauncher, free_port, sim_command


def _wait(launcher: ProcessLauncher, path: str = "/health", timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if launcher.process is not None and launcher.process.poll() is not None:
            log = launcher.log_path.read_text()[-3000:] if launcher.log_path else ""
            raise RuntimeError(f"{launcher.name} exited early:\n{log}")
        try:
            if httpx.get(launcher.url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{launcher.name} not ready at {path}")
        time.sleep(0.05)


@contextmanager
def sim_engine(dialect: str, model: str, log_dir: Path, *, name: str | None = None,
               args: Sequence[str] = ()) -> Iterator[ProcessLauncher]:
    port = free_port()
    name = name or f"sim-{dialect}-{port}"
    launcher = ProcessLauncher(name, sim_command(dialect, model, port, extra_args=args), port,
                               log_path=log_dir / f"{name}.log")
    launcher.start()
    try:
        _wait(launcher)
        yield launcher
    finally:
        launcher.stop()


def gateway_config(backends: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    return {"backends": backends, **sections}


@contextmanager
def gateway_server(config: dict[str, Any] | None, log_dir: Path, *, name: str = "gateway",
                   ready_path: str = "/ready", timeout_s: float = 60.0,
                   extra_args: Sequence[str] = ()) -> Iterator[ProcessLauncher]:
    """``extra_args`` go after ``serve`` (e.g. ``["--workers", "2"]``)."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), *extra_args]
    if config is not None:
        config_path = log_dir / f"{name}-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command += ["--config", str(config_path)]
    launcher = ProcessLauncher(name, command, port, log_path=log_dir / f"{name}-{port}.log")
    launcher.start()
    try:
        _wait(launcher, ready_path, timeout_s)
        yield launcher
    finally:
        launcher.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
