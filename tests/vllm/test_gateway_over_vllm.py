"""The gateway in front of a real vLLM CPU server, driven by the official openai client: stream and
non-stream, chat and completions, usage passthrough and stripping, vLLM's 400 relayed as the same
OpenAI error, unknown model 404, and the prefix cache hit reported through the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.fleet import gateway_server
from tests.support.vllm_server import VllmServer

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {"backends": [{"name": "real-vllm", "kind": "vllm", "url": vllm_server.base_url,
                            "models": [vllm_server.model]}]}
    with gateway_server(config, tmp_path_factory.mktemp("gw-vllm"), name="gw-real-vllm") as server:
        yield server.url


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)


def test_completions_non_stream_and_stream_agree(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    args = {"model": vllm_server.model, "prompt": "the cat sat on", "max_tokens": 10, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**args)  # type: ignore[call-overload]
    assert whole.usage.completion_tokens == 10 and whole.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI,
                                                         vllm_server: VllmServer) -> None:
    chunks = list(client.chat.completions.create(
        model=vllm_server.model, messages=[{"role": "user", "content": "hello there"}], max_tokens=5,
        stream=True, temperature=0, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices and c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_chat_matches_engine_directly(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    messages = [{"role": "user", "content": "count with me: one two three"}]
    via_gateway = client.chat.completions.create(model=vllm_server.model, messages=messages,  # type: ignore[arg-type]
                                                 max_tokens=8, temperature=0,
                                                 extra_body={"ignore_eos": True})
    direct = httpx.post(vllm_server.base_url + "/v1/chat/completions", timeout=60, json={
        "model": vllm_server.model, "messages": messages, "max_tokens": 8, "temperature": 0,
        "ignore_eos": True}).json()
    assert via_gateway.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert via_gateway.usage is not None
    assert via_gateway.usage.prompt_tokens == direct["usage"]["prompt_tokens"]


def test_prefix_cache_hit_is_reported(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    prompt = " ".join(f"word{i}" for i in range(300))
    client.completions.create(model=vllm_server.model, prompt=prompt, max_tokens=2)
    again = client.completions.create(model=vllm_server.model, prompt=prompt, max_tokens=2)
    details = again.usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 128 and details.cached_tokens % 128 == 0


def test_vllm_400_is_relayed_as_the_same_openai_error(gateway: str, vllm_server: VllmServer) -> None:
    body = {"model": vllm_server.model, "prompt": "hi " * 3000, "max_tokens": 4}
    direct = httpx.post(vllm_server.base_url + "/v1/completions", json=body, timeout=60)
    via_gateway = httpx.post(gateway + "/v1/completions", json=body, timeout=60)
    assert direct.status_code == via_gateway.status_code == 400
    assert via_gateway.json()["error"]["param"] == direct.json()["error"]["param"] == "input_tokens"
    assert via_gateway.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="not-served", prompt="hi", max_tokens=2)


def test_engine_numbers_reach_stats(gateway: str) -> None:
    stats = httpx.get(gateway + "/stats", timeout=10).json()["backends"]["real-vllm"]
    assert stats["healthy"] is True
    assert stats["kv_cache_usage"] is not None
    metrics = httpx.get(gateway + "/metrics", timeout=10).text
    assert 'gateway_backend_healthy{backend="real-vllm"} 1.0' in metrics


def test_path_is_excluded_from_labels(gateway: str) -> None:
    metrics = httpx.get(gateway + "/metrics", timeout=10).text
    assert "http://" not in metrics


