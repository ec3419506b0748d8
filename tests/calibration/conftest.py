"""Engines for the calibration tests: a real vLLM CPU server with a small cache of its own (64 blocks
of 128 tokens, ``--max-num-seqs 2``) and simulators configured the same way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.calibration.replay import MAX_MODEL_LEN, MAX_NUM_SEQS, NUM_BLOCKS
from tests.support.vllm_fixtures import require_vllm_install
from tests.support.vllm_server import VllmServer, VllmServerConfig


@pytest.fixture(scope="module")
def small_cache_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A started vLLM server: 64 KV blocks, 2 sequences at most, 2048-token context."""
    install = require_vllm_install()
    config = VllmServerConfig(num_gpu_blocks=NUM_BLOCKS, max_num_seqs=MAX_NUM_SEQS,
                              max_model_len=MAX_MODEL_LEN)
    server = VllmServer(tmp_path_factory.mktemp("vllm-calibration") / "vllm-server.log",
                        config=config, install=install)
    server.start()
    try:
        yield server
    finally:
        server.stop()
