"""The recorded vLLM transcripts in tests/data/vllm: their facts match their bytes, and a live server
still answers with the same event structure (role-first chat chunk, usage chunk with ``choices: []``
only when asked, ``[DONE]`` last). Re-record with scripts/record_vllm_transcripts.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.vllm_server import VllmServer
from tests.support.vllm_transcripts import SPECS, Recording, TranscriptSpec, facts, record

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"
STRUCTURE = ("status", "done_last", "done_count", "role_first", "usage_chunk", "finish_reason", "object")


def stored(spec: TranscriptSpec) -> tuple[bytes, dict[str, Any]]:
    return (DATA / f"{spec.name}.sse").read_bytes(), json.loads((DATA / f"{spec.name}.json").read_text())


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_stored_facts_describe_the_stored_bytes(spec: TranscriptSpec) -> None:
    body, recorded = stored(spec)
    rederived = facts(Recording(spec, recorded["status"], recorded["content_type"], body))
    assert rederived == recorded


@pytest.mark.parametrize("spec", [spec for spec in SPECS if spec.body["stream"]], ids=lambda s: s.name)
def test_stored_stream_shapes(spec: TranscriptSpec) -> None:
    _, recorded = stored(spec)
    if recorded["status"] != 200:
        assert recorded["error"]["param"] == "max_tokens"
        assert recorded["error"]["code"] == 400
        assert recorded["data_events"] == 0
        return
    asked_usage = spec.body.get("stream_options", {}).get("include_usage", False)
    assert recorded["content_type"].startswith("text/event-stream")
    assert recorded["done_last"] and recorded["done_count"] == 1
    assert recorded["role_first"] == (spec.path == "/v1/chat/completions")
    assert recorded["usage_chunk"] == asked_usage
    # The finish_reason chunk is the last choice chunk; the usage chunk (if any) follows it.
    assert recorded["finish_reason_index"] == recorded["choice_events"] - 1
    if asked_usage:
        assert recorded["usage_chunk_index"] == recorded["json_events"] - 1
        assert recorded["usage"]["completion_tokens"] == spec.body["max_tokens"]


@pytest.mark.vllm
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_live_server_keeps_the_recorded_structure(vllm_server: VllmServer, spec: TranscriptSpec) -> None:
    _, recorded = stored(spec)
    live = facts(record(vllm_server.base_url, spec))
    for name in STRUCTURE:
        assert live.get(name) == recorded.get(name), name
    if recorded["status"] != 200:
        assert {k: live["error"][k] for k in ("type", "param", "code")} == \
            {k: recorded["error"][k] for k in ("type", "param", "code")}
        return
    assert live["usage_chunk_index"] == (live["json_events"] - 1 if live["usage_chunk"] else None)
    assert live["finish_reason_index"] == live["choice_events"] - 1
    if recorded["usage"] is not None:
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert live["usage"][name] == recorded["usage"][name], name
