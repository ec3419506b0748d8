"""The sim's vLLM dialect against recorded real vLLM 0.32 responses (tests/data/vllm): the same request
gets the same status, content type, number of events and the same JSON structure event by event (key
order included); only values that vary (ids, timestamps, text, fingerprint) may differ."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"
RECORDINGS = sorted(DATA.glob("*.json")) if DATA.is_dir() else []


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def events(body: str) -> list[str]:
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


@pytest.fixture(scope="module")
def tiny_llama_sim(launch_sim: Any) -> Iterator[str]:
    sim = launch_sim("vllm", ["--model", "tiny-llama", "--block-size", "128", "--num-blocks", "256",
                              "--max-model-len", "2048"])
    yield sim.url
    sim.stop()


@pytest.mark.skipif(not RECORDINGS, reason="no recorded vLLM transcripts")
@pytest.mark.parametrize("recording", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_same_structure_as_real_vllm(recording: Path, tiny_llama_sim: str) -> None:
    facts = json.loads(recording.read_text())
    recorded = recording.with_suffix(".sse").read_text()
    response = httpx.post(tiny_llama_sim + facts["path"], json=facts["request"], timeout=30)
    assert response.status_code == facts["status"]
    assert response.headers["content-type"] == facts["content_type"]
    if facts["status"] != 200:
        assert response.json() == json.loads(recorded)
        return
    ours, theirs = events(response.text), events(recorded)
    assert len(ours) == len(theirs) == facts["data_events"]
    for mine, real in zip(ours, theirs, strict=True):
        if real == "[DONE]":
            assert mine == "[DONE]"
            continue
        assert shape(json.loads(mine)) == shape(json.loads(real))
