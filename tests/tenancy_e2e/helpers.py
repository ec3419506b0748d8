"""Helpers for the tenancy end-to-end tests: a private redis-server that can be killed and restarted
on the same port (by its PID), the shared Redis under a unique key prefix (read and cleaned up, never
flushed), the ``llm-gateway keys`` CLI as a subprocess, Prometheus text and OpenAI error checks, and
the token ledger the limiter keeps per tenant in Redis."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from backends.launchers.process import ProcessLauncher, free_port

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "sim-model"


@contextlib.contextmanager
def gateways(configs: dict[str, dict[str, Any]], log_dir: Path) -> Iterator[list[ProcessLauncher]]:
    """Gateway processes (``llm-gateway serve --config``), one per named config, started together and
    ready (``/ready``) on free ports; stopped by their PIDs. Logs and configs go to ``log_dir``."""
    launchers = []
    try:
        for name, config in configs.items():
            port = free_port()
            config_path = log_dir / f"{name}-{port}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                       "--config", str(config_path)]
            launcher = ProcessLauncher(name, command, port, log_path=log_dir / f"{name}-{port}.log")
            launcher.start()
            launchers.append(launcher)
        for launcher in launchers:
            wait_ready(launcher)
        yield launchers
    finally:
        for launcher in launchers:
            launcher.stop()


def config_path(launcher: ProcessLauncher) -> Path:
    assert launcher.log_path is not None
    return launcher.log_path.with_suffix(".yaml")


def wait_ready(launcher: ProcessLauncher, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if launcher.process is None or launcher.process.poll() is not None:
            log = launcher.log_path.read_text()[-3000:] if launcher.log_path else ""
            raise RuntimeError(f"{launcher.name} exited early:\n{log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(launcher.url + "/ready", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{launcher.name} not ready"
        time.sleep(0.05)


def unique_prefix(kind: str) -> str:
    return f"test:tenancy_e2e:{kind}:{uuid.uuid4().hex[:12]}:"


def shared_redis() -> redis.Redis:
    return redis.Redis.from_url(SHARED_REDIS_URL, socket_timeout=5)


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove this test's keys (never a flush: the Redis is shared)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def dump_prefix(client: redis.Redis, prefix: str) -> bytes:
    """Every key under ``prefix`` and its whole value, as bytes to search for secrets."""
    dumped = b""
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        kind: Any = client.type(key)
        if kind == b"none":  # expired (limit counters carry TTLs) between SCAN and TYPE: nothing left
            continue
        readers: dict[bytes, Any] = {
            b"hash": client.hgetall, b"set": client.smembers, b"string": client.get,
            b"list": lambda k: client.lrange(k, 0, -1),
            b"zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
        dumped += key + b"=" + repr(readers[kind](key)).encode() + b"\n"
    return dumped


@dataclass(frozen=True)
class Ledger:
    charged: int  # net tokens charged to the tenant (reservations settled to the real usage)
    open: int  # admitted, not yet settled
    seq: int  # admissions + settlements


def read_ledger(client: redis.Redis, prefix: str, tenant: str) -> Ledger:
    charged, open_, seq = client.hmget(f"{prefix}ledger:t:{tenant}", ["charged", "open", "seq"])
    return Ledger(int(charged or 0), int(open_ or 0), int(seq or 0))


def settled_ledger(client: redis.Redis, prefix: str, tenant: str, timeout_s: float = 10.0) -> Ledger:
    """The ledger once every admitted request of the tenant has been settled."""
    deadline = time.monotonic() + timeout_s
    while True:
        ledger = read_ledger(client, prefix, tenant)
        if ledger.open == 0:
            return ledger
        assert time.monotonic() < deadline, f"{ledger.open} leases of {tenant} never settled"
        time.sleep(0.02)


def estimate_tokens(text: str) -> int:
    """What the gateway reserves for a prompt before tokenization (four characters a token)."""
    return math.ceil(len(text) / 4)


def keys_cli(*args: str, stdin: str | None = None) -> str:
    """Run ``llm-gateway keys ...`` as a user would; returns its standard output."""
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(tenant: str) -> tuple[str, dict[str, Any]]:
    """``llm-gateway keys new``: the key (shown once, in a comment) and its config entry."""
    out = keys_cli("new", "--tenant", tenant)
    secret_line = next(line for line in out.splitlines() if line.startswith("# gwk_"))
    entry: dict[str, Any] = yaml.safe_load(out)["keys"][0]
    return secret_line[2:].strip(), entry


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series != name and not series.startswith(name + "{"):
            continue
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def engine_tokens(engine_url: str) -> tuple[int, int]:
    """The vLLM-dialect engine's own counters: prompt tokens and generated tokens so far."""
    text = scrape(engine_url)
    return int(metric(text, "vllm:prompt_tokens_total")), int(metric(text, "vllm:generation_tokens_total"))


def openai_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == error_type, error
    return error


def set_fault(engine_url: str, **fault: object) -> None:
    response = httpx.post(engine_url + "/sim/faults", json=fault, timeout=5)
    assert response.status_code == 200, response.text


def clear_fault(engine_url: str) -> None:
    httpx.delete(engine_url + "/sim/faults", timeout=5)


