"""The official openai client (sync and async, stream and non-stream, chat and completions) against the
gateway over real HTTP, over each backend kind; content compared with the engine's own answer."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me a story."}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_chat_non_stream_matches_stream(gateway_url: str, honours_ignore_eos: bool) -> None:
    c = client(gateway_url)
    whole = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12,  # type: ignore[arg-type]
                                      extra_body={"ignore_eos": True})
    finish = whole.choices[0].finish_reason
    assert whole.usage is not None
    n = whole.usage.completion_tokens
    assert (finish, n) == ("length", 12) if honours_ignore_eos else (finish == "length") == (n == 12)
    assert whole.usage.prompt_tokens > 0
    text = whole.choices[0].message.content
    assert text
    stream = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, stream=True,  # type: ignore[arg-type]
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == n
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_stream_without_usage_strips_it(gateway_url: str) -> None:
    c = client(gateway_url)
    chunks = list(c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True,
                                       extra_body={"ignore_eos": True}))
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)
    text = "".join(ch.choices[0].text for ch in chunks)
    whole = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                 extra_body={"ignore_eos": True})
    assert whole.choices[0].text == text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 8


def test_raw_stream_ends_with_done(gateway_url: str) -> None:
    body = {"model": MODEL, "prompt": "abc def", "max_tokens": 5, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway_url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"choices":[]' in events[-2] and '"usage"' in events[-2]


def test_same_text_as_engine_directly(gateway_url: str, sims: dict[str, object]) -> None:
    """The gateway relays exactly what the engine generates: ask the engine itself and compare."""
    prompt = "The quick brown fox"
    via_gateway = client(gateway_url).completions.create(model=MODEL, prompt=prompt, max_tokens=10,
                                                        temperature=0, extra_body={"ignore_eos": True})
    engine = sims["vllm"]
    direct = httpx.post(engine.url + "/v1/completions", timeout=30,  # type: ignore[attr-defined]
                        json={"model": MODEL, "prompt": prompt, "max_tokens": 10, "temperature": 0,
                              "ignore_eos": True}).json()
    assert via_gateway.choices[0].text == direct["choices"][0]["text"]


async def test_async_client_chat_and_completions(gateway_url: str) -> None:
    c = openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
    try:
        chat = await c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6,  # type: ignore[arg-type]
                                               extra_body={"ignore_eos": True})
        assert chat.usage is not None and chat.usage.completion_tokens == 6
        stream = await c.completions.create(model=MODEL, prompt="hello", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
        chunks = [ch async for ch in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices)
    finally:
        await c.close()


def test_models_list(gateway_url: str) -> None:
    models = client(gateway_url).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_unknown_model_is_404(gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway_url).completions.create(model="nope", prompt="x", max_tokens=2)
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "model"  # the SDK hands over error's inner object


@pytest.mark.parametrize(("field", "value"), [("max_tokens", 0), ("temperature", 9), ("top_p", 0),
                                               ("n", 3), ("stop", 5)])
def test_invalid_field_is_400_naming_it(gateway_url: str, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": CHAT, field: value}
    response = httpx.post(gateway_url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2]", b'{"model": "sim-model"}'])
def test_malformed_body_is_400(gateway_url: str, raw: bytes) -> None:
    response = httpx.post(gateway_url + "/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_body_over_limit_is_413(gateway_url: str) -> None:
    body = {"model": MODEL, "prompt": "x" * (5 * 1024 * 1024), "max_tokens": 1}
    response = httpx.post(gateway_url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("body", [
    {"model": MODEL, "prompt": "Say something", "max_tokens": 4},  # an answer
    {"model": MODEL, "prompt": 5},  # an error (400)
])
def test_whole_answers_say_their_length(gateway_url: str, body: dict[str, object]) -> None:
    """A non-stream answer carries a content-length (not chunked framing): that is what lets the server
    send its head and body in one write (gateway/http_protocol.py)."""
    with httpx.Client(timeout=30) as client:
        response = client.post(gateway_url + "/v1/completions", json=body)
    assert "transfer-encoding" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content) > 0
    assert response.json()
