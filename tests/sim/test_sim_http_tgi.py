"""The TGI dialect over real HTTP against a ``python -m backends.sim`` subprocess."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

MODEL = "sim-test"  # as started by conftest.start_sim
SSE = Any  # the ``sse`` fixture's reader (conftest.SSE)


def post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def test_generate_with_details(tgi_sim: str) -> None:
    response = post(tgi_sim, "/generate", {"inputs": "Tell me about TGI",
                                           "parameters": {"max_new_tokens": 6}})
    assert response.status_code == 200
    assert response.headers["x-generated-tokens"] == "6"
    body = response.json()
    details = body["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 6
    assert "".join(t["text"] for t in details["tokens"]) == body["generated_text"]
    assert all(set(t) == {"id", "text", "logprob", "special"} for t in details["tokens"])
    plain = post(tgi_sim, "/generate", {"inputs": "Tell me about TGI",
                                        "parameters": {"max_new_tokens": 6, "details": False}}).json()
    assert plain == {"generated_text": body["generated_text"]}
    full = post(tgi_sim, "/generate", {"inputs": "Tell me about TGI",
                                       "parameters": {"max_new_tokens": 6, "return_full_text": True}}).json()
    assert full["generated_text"] == "Tell me about TGI" + body["generated_text"]


def test_generate_stream_events_end_with_text_and_details(tgi_sim: str, sse: SSE) -> None:
    request = {"inputs": "Stream to the end", "parameters": {"max_new_tokens": 200}}
    response = post(tgi_sim, "/generate_stream", request)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in sse.data(response.text)
    events = sse.json(response.text)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["token"] == {**last["token"], "text": "</s>", "special": True}
    assert last["details"]["finish_reason"] == "eos_token"
    assert last["details"]["generated_tokens"] == len(events)
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events if not e["token"]["special"])
    whole = post(tgi_sim, "/generate", request).json()
    assert whole["generated_text"] == last["generated_text"]
    compat = post(tgi_sim, "/", {**request, "stream": True})
    assert sse.json(compat.text)[-1]["generated_text"] == last["generated_text"]


def test_stop_sequence_stays_in_the_text(tgi_sim: str) -> None:
    base = {"inputs": "Stop here please", "parameters": {"max_new_tokens": 20}}
    text = post(tgi_sim, "/generate", base).json()["generated_text"]
    stop = re.findall(r" \w+", text)[3]
    result = post(tgi_sim, "/generate", {**base, "parameters": {"max_new_tokens": 20, "stop": [stop]}}).json()
    assert result["details"]["finish_reason"] == "stop_sequence"
    assert result["generated_text"].endswith(stop) and text.startswith(result["generated_text"])


def test_messages_api_chat_and_completions(tgi_sim: str, sse: SSE) -> None:
    chat = {"model": "anything", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    whole = post(tgi_sim, "/v1/chat/completions", chat).json()
    assert whole["object"] == "chat.completion" and whole["model"] == MODEL and whole["id"] == ""
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 4
    stream = post(tgi_sim, "/v1/chat/completions", {**chat, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    data = sse.data(stream.text)
    assert data[-1] == "[DONE]"
    chunks = sse.json(stream.text)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == \
        whole["choices"][0]["message"]["content"]
    completion = post(tgi_sim, "/v1/completions", {"model": "x", "prompt": "Hi", "max_tokens": 3,
                                                   "stream": True})
    parts = sse.json(completion.text)
    assert [p["choices"][0]["finish_reason"] for p in parts] == ["", "", "length"]


def test_errors_have_tgi_shapes(tgi_sim: str, sse: SSE) -> None:
    invalid = post(tgi_sim, "/generate", {"inputs": "x", "parameters": {"temperature": 0}})
    assert invalid.status_code == 422
    assert invalid.json() == {"error": "`temperature` must be strictly positive", "error_type": "validation"}
    too_long = post(tgi_sim, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 600}})
    assert too_long.status_code == 422 and "`max_new_tokens` must be <= 512" in too_long.json()["error"]
    typed = post(tgi_sim, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": -1}})
    assert typed.status_code == 422 and typed.text.startswith("Failed to deserialize the JSON body")
    missing = post(tgi_sim, "/generate", {"parameters": {}})
    assert missing.status_code == 422 and "missing field `inputs`" in missing.text
    malformed = httpx.post(tgi_sim + "/generate", content=b"{x",
                           headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.text.startswith("Failed to parse the request body as JSON")
    in_stream = post(tgi_sim, "/generate_stream", {"inputs": "x", "parameters": {"top_p": 1.0}})
    assert in_stream.status_code == 200
    assert sse.json(in_stream.text) == [{"error": "`top_p` must be > 0.0 and < 1.0",
                                         "error_type": "validation"}]


def test_info_models_tokenize_health_metrics(tgi_sim: str) -> None:
    info = httpx.get(tgi_sim + "/info").json()
    assert info["model_id"] == MODEL and info["max_total_tokens"] == 512 and info["max_input_tokens"] == 511
    assert info["max_concurrent_requests"] == 128
    assert httpx.get(tgi_sim + "/v1/models").json()["data"][0]["id"] == MODEL
    tokens = post(tgi_sim, "/tokenize", {"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens] == ["<s>", "Hello", " worl", "d"]
    assert tokens[2]["start"] == 5 and tokens[2]["stop"] == 10
    assert httpx.get(tgi_sim + "/health").status_code == 200
    post(tgi_sim, "/generate", {"inputs": "count me", "parameters": {"max_new_tokens": 2}})
    metrics = httpx.get(tgi_sim + "/metrics").text
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_batch_current_max_tokens",
                 "tgi_request_count",
                 "tgi_request_success", 'tgi_request_failure{err="validation"}',
                 'tgi_batch_inference_count{method="decode"}', "tgi_request_duration_bucket",
                 "tgi_request_queue_duration_count", "tgi_request_input_length_sum",
                 "tgi_request_generated_tokens_bucket", "tgi_request_mean_time_per_token_duration_count"):
        assert name in metrics, name
    assert "_total" not in metrics and "vllm:" not in metrics


async def test_overload_is_429_or_an_in_stream_error(slow_tgi_sim: str) -> None:
    long = {"inputs": "keep going", "parameters": {"max_new_tokens": 400}}
    async with httpx.AsyncClient(base_url=slow_tgi_sim, timeout=30) as client:
        async def hold() -> None:
            async with client.stream("POST", "/generate_stream", json=long) as response:
                async for _line in response.aiter_lines():
                    pass

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        for _ in range(100):
            state = (await client.get("/sim/state")).json()
            if state["in_flight"] == 2:
                break
            await asyncio.sleep(0.02)
        refused = await client.post("/generate", json={"inputs": "one more"})
        assert refused.status_code == 429
        assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        streamed = await client.post("/generate_stream", json={"inputs": "one more"})
        assert streamed.status_code == 200 and '"error_type":"overloaded"' in streamed.text
        metrics = (await client.get("/metrics")).text
        assert 'tgi_request_failure{err="overloaded"} 2' in metrics
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
