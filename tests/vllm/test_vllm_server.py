"""The launcher (its failure paths run without vLLM, against fake interpreters) and the facts about the
real server that the adapter and the simulator build on (marked ``vllm``)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.vllm_server import VllmInstall, VllmServer, VllmServerError


@pytest.mark.vllm
def test_health_is_200_with_an_empty_body(vllm_server: VllmServer) -> None:
    response = httpx.get(f"{vllm_server.base_url}/health", timeout=5)
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.vllm
def test_models_lists_the_served_name(vllm_server: VllmServer) -> None:
    models = httpx.get(f"{vllm_server.base_url}/v1/models", timeout=5).json()
    assert [model["id"] for model in models["data"]] == ["tiny-llama"]


@pytest.mark.vllm
def test_cache_geometry_is_reported_in_metrics(vllm_server: VllmServer) -> None:
    text = httpx.get(f"{vllm_server.base_url}/metrics", timeout=5).text
    info = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
    assert 'block_size="128"' in info
    assert 'num_gpu_blocks="256"' in info
    assert 'enable_prefix_caching="True"' in info


@pytest.mark.vllm
def test_prompt_tokens_are_counted_by_the_tokenizer(vllm_server: VllmServer) -> None:
    url = vllm_server.base_url
    counted = httpx.post(f"{url}/tokenize", json={"model": "tiny-llama", "prompt": "hello world"}).json()
    completion = httpx.post(f"{url}/v1/completions", timeout=30, json={
        "model": "tiny-llama", "prompt": "hello world", "max_tokens": 3, "ignore_eos": True}).json()
    assert completion["usage"]["prompt_tokens"] == counted["count"] > 0
    assert completion["usage"]["completion_tokens"] == 3
    assert completion["choices"][0]["finish_reason"] == "length"


def fake_install(tmp_path: Path, script: str) -> VllmInstall:
    """A venv whose python is a shell script: the launcher's own behaviour, without vLLM's 30 s import."""
    venv, model = tmp_path / "venv", tmp_path / "model"
    (venv / "bin").mkdir(parents=True)
    model.mkdir()
    (model / "config.json").write_text("{}")
    (venv / ".installed").touch()
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\n{script}\n")
    python.chmod(0o755)
    return VllmInstall(venv, model)


def test_a_server_that_dies_fails_fast_with_its_log(tmp_path: Path) -> None:
    install = fake_install(tmp_path, 'echo "engine core failed: $*"; exit 3')
    server = VllmServer(tmp_path / "server.log", install=install, ready_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(VllmServerError, match="exited with 3") as failure:
        server.start()
    assert time.monotonic() - started < 30
    assert "engine core failed: -m vllm.entrypoints.openai.api_server" in str(failure.value)
    assert "--enable-prefix-caching" in str(failure.value)
    assert server.pid is None


def test_a_server_that_never_gets_healthy_is_stopped(tmp_path: Path) -> None:
    install = fake_install(tmp_path, "echo starting; exec sleep 120")
    server = VllmServer(tmp_path / "server.log", install=install, ready_timeout_s=1.5)
    with pytest.raises(VllmServerError, match="not healthy after") as failure:
        server.start()
    assert "starting" in str(failure.value)
    assert server.pid is None


def test_a_missing_install_is_refused_with_the_setup_command(tmp_path: Path) -> None:
    server = VllmServer(tmp_path / "server.log", install=VllmInstall(tmp_path / "none", tmp_path / "none"))
    with pytest.raises(VllmServerError, match=r"scripts/setup_vllm\.sh"):
        server.start()
