"""The processes a run needs: a fleet of sim engines (vLLM dialect) and a gateway in front of them, each a
real subprocess on a free loopback port, stopped by its own PID; and the CPU time a process has used
(``/proc/<pid>/stat``), to show the gateway is not the bottleneck."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from backends.launchers.process import ProcessLauncher, free_port, sim_command


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of(launcher: ProcessLauncher) -> int:
    assert launcher.process is not None
    return launcher.process.pid


class SimFleet:
    """``count`` sim engines named ``engine-0..``; use as an async context manager."""

    def __init__(self, count: int, model: str, sim_args: Sequence[str], log_dir: Path) -> None:
        self.model = model
        self.launchers: list[ProcessLauncher] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            port = free_port()
            name = f"engine-{index}"
            self.launchers.append(ProcessLauncher(name, sim_command("vllm", model, port, extra_args=sim_args),
                                                  port, log_path=log_dir / f"{name}-{port}.log"))

    @property
    def names(self) -> list[str]:
        return [launcher.name for launcher in self.launchers]

    @property
    def urls(self) -> dict[str, str]:
        return {launcher.name: launcher.url for launcher in self.launchers}

    def pids(self) -> dict[str, int]:
        return {launcher.name: pid_of(launcher) for launcher in self.launchers}

    async def __aenter__(self) -> SimFleet:
        try:
            for launcher in self.launchers:
                launcher.start()
            await asyncio.gather(*(launcher.wait_healthy() for launcher in self.launchers))
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for launcher in self.launchers:
            launcher.stop()

    async def reset_prefix_caches(self, session: aiohttp.ClientSession) -> int:
        """Forget every cached block (the engines must be idle); returns the blocks forgotten."""
        total = 0
        for url in self.urls.values():
            async with session.post(f"{url}/sim/reset_prefix_cache") as response:
                response.raise_for_status()
                total += int((await response.json())["forgotten_blocks"])
        return total

    async def kill(self, session: aiohttp.ClientSession, name: str) -> None:
        """End engine ``name`` abruptly (``POST /sim/faults {"exit": true}``: the process exits at once)."""
        url = self.urls[name]
        with suppress(aiohttp.ClientError):
            async with session.post(f"{url}/sim/faults", json={"exit": True}) as response:
                await response.read()
        launcher = next(launcher for launcher in self.launchers if launcher.name == name)
        for _ in range(100):
            if launcher.process is None or launcher.process.poll() is not None:
                return
            await asyncio.sleep(0.02)
        launcher.stop()


def gateway_config(urls: dict[str, str], model: str, policy: str,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gateway's YAML: one vLLM-dialect backend per engine, ``policy`` with its default options."""
    config: dict[str, Any] = {
        "server": {"log_level": "warning"},
        "routing": {"default_policy": policy},
        "backends": [{"name": name, "kind": "vllm", "url": url, "models": [model]}
                     for name, url in urls.items()],
    }
    for key, value in (overrides or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


class GatewayProcess:
    """``python -m gateway.cli serve`` with a config written to ``log_dir``; an async context manager."""

    def __init__(self, config: dict[str, Any], log_dir: Path, name: str) -> None:
        port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        config_path = log_dir / f"{name}-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--config",
                   str(config_path)]
        self.config = config
        self.launcher = ProcessLauncher(name, command, port, log_path=log_dir / f"{name}-{port}.log")

    @property
    def url(self) -> str:
        return self.launcher.url

    @property
    def pid(self) -> int:
        return pid_of(self.launcher)

    async def __aenter__(self) -> GatewayProcess:
        self.launcher.start()
        try:
            await self.launcher.wait_healthy(timeout_s=60.0)
        except BaseException:
            self.launcher.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.launcher.stop()
