"""Engines for the calibration tests: a real vLLM CPU server with a small cache of its own (64 blocks
of 128 tokens, ``--max-num-seqs 2``) and simulators configured the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.calibration.replay import MAX_MODEL_LEN, MAX_NUM_SEQS, NUM_BLOCKS
from tests.support.vllm_fixtures import require_vllm_install
from tests.support.vllm_server import VllmServer, VllmServerConfig


def server_cpus() -> tuple[int, ...]:
    """The last CPU this process may use, when it may use two or more; () otherwise.

    Spread over both cores of a 2-core machine, vLLM's worker, engine core and API server together
    with the test's threads left /metrics polls unanswered for whole generations (a CI run saw no poll
    answered in 3 rounds of the queue test; here polls waited up to 2 s and the test's own thread
    stalled for up to 4.6 s). With every vLLM
    process on one core and the test free to use the other, each of ~60 polls in 3 rounds answered in
    7-23 ms, and a pair of 1,500-token generations took 5.3-5.8 s instead of 4-5 s."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[-1],) if len(allowed) > 1 else ()


@pytest.fixture(scope="module")
def small_cache_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A started vLLM server: 64 KV blocks, 2 sequences at most, 2048-token context."""
    install = require_vllm_install()
    config = VllmServerConfig(num_gpu_blocks=NUM_BLOCKS, max_num_seqs=MAX_NUM_SEQS,
                              max_model_len=MAX_MODEL_LEN, cpus=server_cpus())
    server = VllmServer(tmp_path_factory.mktemp("vllm-calibration") / "vllm-server.log",
                        config=config, install=install)
    server.start()
    try:
        yield server
    finally:
        server.stop()
