"""Tests against a real vLLM CPU server (marked ``vllm``); the ``vllm_server`` fixture lives in
tests/conftest.py so that every directory shares one server."""
