"""The native /generate dialect and TGI's dialect (with huggingface_hub's InferenceClient, a real TGI
client) against the gateway, over each backend kind."""

from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

PROMPT = "Write about the sea"


def test_native_generate_defaults(gateway_url: str) -> None:
    response = httpx.post(gateway_url + "/generate", json={"prompt": PROMPT, "max_tokens": 7,
                                                           "ignore_eos": True}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"text", "tokens", "finish_reason"}
    assert body["tokens"] == 7 and body["finish_reason"] == "length" and body["text"]


def test_native_generate_stream_matches_whole(gateway_url: str) -> None:
    request = {"prompt": PROMPT, "max_tokens": 9, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(gateway_url + "/generate", json=request, timeout=30).json()
    with httpx.stream("POST", gateway_url + "/generate", json={**request, "stream": True},
                      timeout=30) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert "".join(e["text"] for e in events) == whole["text"]
    assert events[-1]["finish_reason"] == "length" and events[-1]["tokens"] == 9
    assert all("finish_reason" not in e for e in events[:-1])


def test_native_generate_bad_field(gateway_url: str) -> None:
    response = httpx.post(gateway_url + "/generate", json={"prompt": PROMPT, "max_tokens": -1}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_tgi_client_generate(gateway_url: str) -> None:
    client = InferenceClient(model=gateway_url)
    out = client.text_generation(PROMPT, max_new_tokens=6, details=True, seed=1)
    assert out.generated_text
    assert out.details is not None
    assert out.details.finish_reason in {"length", "eos_token"}
    assert out.details.generated_tokens <= 6
    plain = client.text_generation(PROMPT, max_new_tokens=6, seed=1)
    assert plain == out.generated_text


def test_tgi_client_stream(gateway_url: str) -> None:
    client = InferenceClient(model=gateway_url)
    whole = client.text_generation(PROMPT, max_new_tokens=8, seed=1)
    events = list(client.text_generation(PROMPT, max_new_tokens=8, seed=1, stream=True, details=True))
    assert "".join(e.token.text for e in events) == whole
    assert events[-1].generated_text == whole
    assert events[-1].details is not None and events[-1].details.generated_tokens >= 1
    assert all(e.details is None for e in events[:-1])
    tokens = list(client.text_generation(PROMPT, max_new_tokens=8, seed=1, stream=True))
    assert "".join(tokens) == whole


def test_tgi_generate_endpoints_raw(gateway_url: str) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "details": True}}
    response = httpx.post(gateway_url + "/generate", json=body, timeout=30)
    assert response.status_code == 200
    data = response.json()
    assert data["generated_text"] and data["details"]["finish_reason"] in {"length", "eos_token"}
    with httpx.stream("POST", gateway_url + "/generate_stream", json=body, timeout=30) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert "[DONE]" not in lines[-1]
    last = json.loads(lines[-1][5:])
    assert last["generated_text"] == data["generated_text"]
    assert last["details"]["finish_reason"] == data["details"]["finish_reason"]


def test_tgi_validation_error_is_422_tgi_shaped(gateway_url: str) -> None:
    response = httpx.post(gateway_url + "/generate",
                          json={"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, timeout=10)
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "validation" and "max_new_tokens" in body["error"]
    with pytest.raises(ValidationError, match="top_p"):  # the TGI client's own validation error class
        InferenceClient(model=gateway_url).text_generation(PROMPT, max_new_tokens=6, top_p=1.5)
