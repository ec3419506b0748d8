"""Session-wide fixtures shared by every test directory: one real vLLM server per test session
(started on first use; skipped without the vLLM venv, a failure under CI)."""

from __future__ import annotations

from tests.support.vllm_fixtures import vllm_server

__all__ = ["vllm_server"]
