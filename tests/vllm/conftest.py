"""Fixtures for the tests against a real vLLM CPU server (marked ``vllm``)."""

from __future__ import annotations

from tests.support.vllm_fixtures import vllm_server

__all__ = ["vllm_server"]
