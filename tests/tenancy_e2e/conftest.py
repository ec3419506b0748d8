"""The fleet the tenancy end-to-end tests share: one vLLM-dialect sim engine and two gateway processes
(replicas A and B) with auth on, limits in the shared Redis under a prefix unique to the session
(deleted afterwards), an admin key, and one API key per tenant declared in config (acme's entry made
by ``llm-gateway keys hash`` with the key on stdin, metered's by ``llm-gateway keys new``), uvicorn
logging at its most verbose level into files the key tests scan for secrets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends.launchers.process import ProcessLauncher
from gateway.tenancy.keys import generate_key, hash_key
from tests.support.fleet import sim_engine
from tests.tenancy_e2e.helpers import (
    MODEL,
    SHARED_REDIS_URL,
    config_path,
    delete_prefix,
    gateways,
    keys_cli,
    new_key,
    shared_redis,
    unique_prefix,
)

PRIVATE_MODEL = "private-model"  # served, but tenant acme may not use it
UNLIMITED = {"requests_per_minute": 1_000_000, "tokens_per_minute": 50_000_000}
TENANTS: list[dict[str, Any]] = [
    {"name": "acme", "models": [MODEL], "limits": {"requests_per_minute": 100_000,
                                                  "tokens_per_minute": 10_000_000}},
    {"name": "tight", "limits": {"requests_per_minute": 2, "tokens_per_minute": 100_000}},
    {"name": "metered", "limits": UNLIMITED},
]


@dataclass
class Fleet:
    a: str  # replica A's URL
    b: str  # replica B's URL
    engine: ProcessLauncher
    prefix: str
    keys: dict[str, str]  # tenant -> API key declared in config
    admin_key: str
    config: dict[str, Any]
    config_paths: list[Path]
    gateways: list[ProcessLauncher]

    def auth(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenancy_e2e_logs")


@pytest.fixture(scope="session")
def engine(log_dir: Path) -> Iterator[ProcessLauncher]:
    with sim_engine("vllm", MODEL, log_dir, name="tx-engine") as launched:
        yield launched


def config_keys() -> tuple[dict[str, str], list[dict[str, Any]]]:
    """acme's entry from ``keys hash`` (key on stdin, as the CLI recommends), metered's from
    ``keys new``, tight's made in process."""
    acme = generate_key().key
    hashed = yaml.safe_load(keys_cli("hash", stdin=acme + "\n"))
    metered, metered_entry = new_key("metered")
    tight = generate_key()
    return {"acme": acme, "metered": metered, "tight": tight.key}, [
        {"id": hashed["id"], "hash": hashed["hash"], "tenant": "acme", "name": "from-keys-hash"},
        metered_entry, {"id": tight.key_id, "hash": tight.key_hash, "tenant": "tight"}]


@pytest.fixture(scope="session")
def fleet(engine: ProcessLauncher, log_dir: Path) -> Iterator[Fleet]:
    prefix = unique_prefix("fleet")
    admin_key = "adm-" + secrets.token_urlsafe(24)
    admin_hash = hash_key(admin_key)
    keys, entries = config_keys()
    config: dict[str, Any] = {
        "backends": [{"name": "engine", "kind": "vllm", "url": engine.url, "models": [MODEL, PRIVATE_MODEL]}],
        "routing": {"default_policy": "round_robin"},
        "server": {"log_level": "trace"},  # uvicorn's most verbose: every ASGI message
        "tenancy": {"auth_enabled": True, "store": "redis", "redis_url": SHARED_REDIS_URL,
                    "redis_prefix": prefix, "redis_timeout_s": 1.0, "admin_key_hashes": [admin_hash],
                    "tenants": TENANTS, "keys": entries},
    }
    client = shared_redis()
    try:
        with gateways({"tx-a": config, "tx-b": config}, log_dir) as (a, b):
            yield Fleet(a.url, b.url, engine, prefix, keys, admin_key, config,
                        [config_path(a), config_path(b)], [a, b])
    finally:
        delete_prefix(client, prefix)
        client.close()
