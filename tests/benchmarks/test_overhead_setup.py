"""The overhead benchmark's setups: the gateway configs it measures (full: keys, Redis limits,
prefix_affinity; off: none of them), the peers' command lines (LiteLLM's config pointing at the same
engine, with the master key it requires), and the launcher's health path (a real subprocess)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from backends.launchers.process import ProcessLauncher, free_port
from benchmarks.overhead import LITELLM_MASTER_KEY, MODEL, PEER_SETUPS, gateway_config, peer_launch
from gateway.settings import GatewaySettings
from gateway.tenancy.keys import verify

ENGINE = "http://127.0.0.1:9"


def test_full_config_turns_every_part_on_and_off_turns_them_off() -> None:
    full, key = gateway_config(ENGINE, True, "bench-test:", speculative=False)
    assert key is not None
    settings = GatewaySettings.model_validate(full)
    tenancy = settings.tenancy
    assert tenancy.auth_enabled and tenancy.store == "redis" and not tenancy.speculative_admission
    assert verify(key, tenancy.keys[0].hash)
    assert tenancy.tenants[0].limits.requests_per_minute and tenancy.tenants[0].limits.tokens_per_minute
    assert settings.routing.default_policy == "prefix_affinity"
    assert tenancy.redis_url == "redis://127.0.0.1:6379"
    private, _ = gateway_config(ENGINE, True, "bench-test:", redis_url="redis://127.0.0.1:6391")
    assert GatewaySettings.model_validate(private).tenancy.redis_url == "redis://127.0.0.1:6391"
    off, no_key = gateway_config(ENGINE, False, "bench-test:")
    assert no_key is None
    off_settings = GatewaySettings.model_validate(off)
    assert not off_settings.tenancy.auth_enabled and off_settings.routing.default_policy == "round_robin"


def test_litellm_is_configured_in_front_of_the_same_engine(tmp_path: Path) -> None:
    peer = peer_launch("litellm", Path("/peers/bin"), ENGINE, 4321, tmp_path)
    config = yaml.safe_load((tmp_path / "litellm.yaml").read_text())
    (deployment,) = config["model_list"]
    assert deployment["model_name"] == MODEL
    assert deployment["litellm_params"]["api_base"] == f"{ENGINE}/v1"
    assert config["general_settings"]["master_key"] == LITELLM_MASTER_KEY == peer.api_key
    assert peer.health_path == "/health/liveliness"
    assert peer.command[:2] == ["env", "LITELLM_LOCAL_MODEL_COST_MAP=True"]
    assert peer.command[2] == "/peers/bin/litellm" and "4321" in peer.command


@pytest.mark.parametrize("name", ["vllm-router", "sglang-router"])
def test_rust_peers_route_to_the_engine_on_the_given_port(name: str, tmp_path: Path) -> None:
    peer = peer_launch(name, Path("/peers/bin"), ENGINE, 4321, tmp_path)
    command = peer.command
    assert command[0] == f"/peers/bin/{name}"
    assert command[command.index("--worker-urls") + 1] == ENGINE
    assert command[command.index("--port") + 1] == "4321"
    assert peer.api_key is None and peer.health_path == "/health"


def test_every_peer_setup_can_be_launched_and_no_other(tmp_path: Path) -> None:
    for name in PEER_SETUPS:
        assert peer_launch(name, Path("/peers/bin"), ENGINE, 4321, tmp_path).command
    with pytest.raises(ValueError):
        peer_launch("envoy", Path("/peers/bin"), ENGINE, 4321, tmp_path)


def test_the_launcher_waits_on_its_health_path(tmp_path: Path) -> None:
    """http.server answers 200 on "/" (a listing) and 404 on "/health": only the right path passes."""
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
               "--directory", str(tmp_path)]
    wrong = ProcessLauncher("files", command, port, health_path="/health")
    wrong.start()
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(wrong.wait_healthy(1.5))
    finally:
        wrong.stop()
    right = ProcessLauncher("files", command, port, health_path="/")
    right.start()
    try:
        asyncio.run(right.wait_healthy(10))
    finally:
        right.stop()
