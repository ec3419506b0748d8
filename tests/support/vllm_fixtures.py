"""Pytest fixtures for the real vLLM server: one server per test session, shared by every test that
needs it (tests/vllm re-exports them; a conftest elsewhere can import them the same way).

When the vLLM venv or the tiny model is missing the tests skip with the reason, except under CI (env
``CI`` set), where they fail: CI must run them. Prepare both with ``scripts/setup_vllm.sh``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.vllm_server import VllmInstall, VllmServer


def require_vllm_install() -> VllmInstall:
    """The install, or skip (fail under CI) with the reason it cannot be used."""
    install = VllmInstall()
    missing = install.missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the vLLM tests, but {missing}", pytrace=False)
        pytest.skip(missing)
    return install


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A started vLLM server serving the tiny model as ``tiny-llama`` (default test-fleet flags)."""
    install = require_vllm_install()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-server.log"
    server = VllmServer(log_path, install=install)
    server.start()
    try:
        yield server
    finally:
        server.stop()
