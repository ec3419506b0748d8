"""The vLLM dialect over real HTTP against a ``python -m backends.sim`` subprocess."""

from __future__ import annotations

import re
from typing import Any

import httpx

MODEL = "sim-test"  # as started by conftest.start_sim
SSE = Any  # the ``sse`` fixture's reader (conftest.SSE)


def post(url: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30, **kwargs)


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **extra}


def test_completion_stream_matches_whole_and_reports_usage(vllm_sim: str, sse: SSE) -> None:
    request = completion("Describe the ocean at night.", max_tokens=12, ignore_eos=True, temperature=0)
    whole = post(vllm_sim, "/v1/completions", request).json()
    response = post(vllm_sim, "/v1/completions", {**request, "stream": True,
                                                   "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    data = sse.data(response.text)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = sse.json(response.text)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["system_fingerprint"]
    text_chunks = chunks[:-1]
    assert len(text_chunks) == 12
    assert all(c["choices"][0]["finish_reason"] is None for c in text_chunks[:-1])
    assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == whole["choices"][0]["text"]
    assert usage_chunk["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"] == 12
    assert set(usage_chunk["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens",
                                         "prompt_tokens_details"}
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")


def test_chat_stream_role_chunk_finish_chunk_and_done(vllm_sim: str, sse: SSE) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "ignore_eos": True, "stream": True}
    response = post(vllm_sim, "/v1/chat/completions", body)
    chunks = sse.json(response.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1] and chunks[-1]["system_fingerprint"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    whole = post(vllm_sim, "/v1/chat/completions", {**body, "stream": False}).json()
    assert whole["choices"][0]["message"]["content"] == \
        "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert whole["usage"]["prompt_tokens_details"]["cached_tokens"] % 16 == 0


def test_natural_end_is_stop_with_eos_counted(vllm_sim: str) -> None:
    body = completion("Tell me something.", max_tokens=200)
    result = post(vllm_sim, "/v1/completions", body).json()
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert result["usage"]["completion_tokens"] == len(re.findall(r" \w+", choice["text"])) + 1


def test_resume_from_prompt_plus_partial_text_continues_identically(vllm_sim: str) -> None:
    prompt = "Once upon a time in a data center,"
    full = post(vllm_sim, "/v1/completions", completion(prompt, max_tokens=20, ignore_eos=True)).json()
    text = full["choices"][0]["text"]
    words = re.findall(r" \w+", text)
    partial = "".join(words[:6])
    rest = post(vllm_sim, "/v1/completions",
                completion(prompt + partial, max_tokens=14, ignore_eos=True)).json()
    assert partial + rest["choices"][0]["text"] == text

    messages = [{"role": "user", "content": "Write a haiku."}]
    chat = {"model": MODEL, "max_tokens": 15, "ignore_eos": True}
    whole = post(vllm_sim, "/v1/chat/completions", {**chat, "messages": messages}).json()
    content = whole["choices"][0]["message"]["content"]
    head = "".join(re.findall(r" \w+", content)[:5])
    resumed = post(vllm_sim, "/v1/chat/completions", {
        **chat, "max_tokens": 10, "add_generation_prompt": False, "continue_final_message": True,
        "messages": [*messages, {"role": "assistant", "content": head}]}).json()
    assert head + resumed["choices"][0]["message"]["content"] == content


def test_stop_string_is_cut_from_the_output(vllm_sim: str, sse: SSE) -> None:
    base = completion("A stop test.", max_tokens=30, ignore_eos=True)
    text = post(vllm_sim, "/v1/completions", base).json()["choices"][0]["text"]
    stop = text[12:15]
    cut = post(vllm_sim, "/v1/completions", {**base, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["stop_reason"] == stop
    assert cut["text"] == text[: text.index(stop)]
    streamed = sse.json(post(vllm_sim, "/v1/completions", {**base, "stop": stop, "stream": True}).text)
    assert "".join(c["choices"][0]["text"] for c in streamed) == cut["text"]


def test_prefix_cache_hits_whole_blocks_and_metrics_count_them(vllm_sim: str) -> None:
    shared = "The shared system prompt says many things about caching. " * 6
    first = post(vllm_sim, "/v1/completions", completion(shared + "First question?", max_tokens=2)).json()
    second = post(vllm_sim, "/v1/completions", completion(shared + "Second one?", max_tokens=2)).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cached >= 64 and cached % 16 == 0 and cached < second["usage"]["prompt_tokens"]
    metrics = httpx.get(vllm_sim + "/metrics").text
    found = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert found is not None and float(found.group(1)) >= cached


def test_metric_names(vllm_sim: str) -> None:
    post(vllm_sim, "/v1/completions", completion("metrics please", max_tokens=3))
    text = httpx.get(vllm_sim + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 'vllm:request_success_total{engine="0",finished_reason="length",model_name="sim-test"}',
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_sum"):
        assert name in text, name
    info = re.search(r"^vllm:cache_config_info\{([^}]*)\} 1\.0$", text, re.M)
    assert info is not None and 'block_size="16"' in info.group(1) and 'num_gpu_blocks="64"' in info.group(1)
    for gone in ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache"):
        assert gone not in text


def test_errors_have_vllm_shapes(vllm_sim: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ({**chat, "max_tokens": -1}, 400, "BadRequestError", "max_tokens"),
        ({**chat, "temperature": 3}, 400, "BadRequestError", "temperature"),
        ({**chat, "model": "nope"}, 404, "NotFoundError", "model"),
        ({**chat, "messages": [{"role": "user", "content": "word " * 600}]}, 400, "BadRequestError",
         "input_tokens"),
        ({"model": MODEL}, 400, "Bad Request", "body.messages"),
    ]
    for body, status, kind, param in cases:
        response = post(vllm_sim, "/v1/chat/completions", body)
        assert response.status_code == status, body
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (kind, param, status)
    malformed = httpx.post(vllm_sim + "/v1/completions", content=b"{nope", timeout=10,
                           headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == 400


def test_models_version_tokenize_health(vllm_sim: str) -> None:
    models = httpx.get(vllm_sim + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == 512
    assert httpx.get(vllm_sim + "/version").json()["version"]
    tokens = post(vllm_sim, "/tokenize", {"model": MODEL, "prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) == 4 and tokens["max_model_len"] == 512
    health = httpx.get(vllm_sim + "/health")
    assert health.status_code == 200 and health.content == b""


def test_same_prompt_same_text_in_both_dialects(vllm_sim: str, tgi_sim: str) -> None:
    prompt = "Cross-dialect determinism"
    vllm_text = post(vllm_sim, "/v1/completions", completion(prompt, max_tokens=9, ignore_eos=True)).json()
    tgi = post(tgi_sim, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 9}}).json()
    assert vllm_text["choices"][0]["text"] == tgi["generated_text"]
