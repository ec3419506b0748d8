from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.launchers.process import ProcessLauncher
from tests.support.fleet import gateway_server, sim_engine

MODEL = "sim-model"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def sims(log_dir: Path) -> Iterator[dict[str, ProcessLauncher]]:
    with sim_engine("vllm", MODEL, log_dir, name="sim-vllm") as vllm, \
            sim_engine("tgi", MODEL, log_dir, name="sim-tgi") as tgi:
        yield {"vllm": vllm, "tgi": tgi}


def backend_entry(name: str, kind: str, url: str, model: str = MODEL) -> dict[str, object]:
    return {"name": name, "kind": kind, "url": url, "models": [model]}


@pytest.fixture(scope="session")
def gateways(sims: dict[str, ProcessLauncher], log_dir: Path) -> Iterator[dict[str, str]]:
    """One gateway per backend kind, so every dialect is exercised over every adapter."""
    with gateway_server({"backends": [backend_entry("vllm-1", "vllm", sims["vllm"].url)]}, log_dir,
                        name="gw-vllm") as over_vllm, \
            gateway_server({"backends": [backend_entry("tgi-1", "tgi", sims["tgi"].url)]}, log_dir,
                           name="gw-tgi") as over_tgi:
        yield {"vllm": over_vllm.url, "tgi": over_tgi.url}


@pytest.fixture(params=["vllm", "tgi"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def gateway_url(backend_kind: str, gateways: dict[str, str]) -> str:
    return gateways[backend_kind]


@pytest.fixture
def honours_ignore_eos(backend_kind: str) -> bool:
    """``ignore_eos`` is a vLLM extension: over TGI a generation may stop before ``max_tokens``."""
    return backend_kind == "vllm"
