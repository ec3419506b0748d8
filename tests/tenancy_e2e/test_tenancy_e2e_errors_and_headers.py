"""What a client sees of tenancy through a real gateway process, with the official openai client where
it fits: 401 (no key, wrong key, also via ``x-api-key``), 403 for a model the tenant may not use, 404
for an unserved model, all OpenAI-shaped; the rate-limit headers on successful non-stream and stream
responses (in the response head, before the first SSE byte); 429 with Retry-After."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
import openai
import pytest

from gateway.tenancy.keys import generate_key
from tests.tenancy_e2e.conftest import PRIVATE_MODEL, Fleet
from tests.tenancy_e2e.helpers import MODEL, openai_error

CHAT: Any = [{"role": "user", "content": "Say something."}]
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4}
REQUEST_HEADERS = tuple(f"x-ratelimit-{kind}-requests" for kind in ("limit", "remaining", "reset"))
TOKEN_HEADERS = tuple(f"x-ratelimit-{kind}-tokens" for kind in ("limit", "remaining", "reset"))
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")  # Go-style, as OpenAI sends


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def assert_rate_limit_headers(headers: Mapping[str, str], requests_limit: int, tokens_limit: int) -> None:
    for name in REQUEST_HEADERS + TOKEN_HEADERS:
        assert name in headers, f"{name} missing from {dict(headers)}"
    assert int(headers["x-ratelimit-limit-requests"]) == requests_limit
    assert int(headers["x-ratelimit-limit-tokens"]) == tokens_limit
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) < requests_limit
    assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) < tokens_limit
    assert DURATION.match(headers["x-ratelimit-reset-requests"]), headers["x-ratelimit-reset-requests"]
    assert DURATION.match(headers["x-ratelimit-reset-tokens"]), headers["x-ratelimit-reset-tokens"]


def test_no_key_is_401_openai_shaped(fleet: Fleet) -> None:
    for path, body in (("/v1/chat/completions", {"model": MODEL, "messages": CHAT}),
                       ("/v1/completions", COMPLETION)):
        error = openai_error(httpx.post(fleet.a + path, json=body, timeout=10), 401, "authentication_error")
        assert error["code"] == "missing_api_key"
    openai_error(httpx.get(fleet.b + "/v1/models", timeout=10), 401, "authentication_error")
    for blank in ({"authorization": "Bearer"}, {"x-api-key": ""}):  # a blank key is no key
        response = httpx.post(fleet.b + "/v1/completions", json=COMPLETION, headers=blank, timeout=10)
        assert openai_error(response, 401, "authentication_error")["code"] == "missing_api_key"


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_wrong_key_is_401_in_either_header(fleet: Fleet, header: str) -> None:
    real = fleet.keys["acme"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")  # known id, wrong secret
    for wrong in (forged, generate_key().key, "sk-not-a-gateway-key"):
        value = f"Bearer {wrong}" if header == "authorization" else wrong
        response = httpx.post(fleet.a + "/v1/completions", json=COMPLETION, headers={header: value},
                              timeout=10)
        assert openai_error(response, 401, "authentication_error")["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as caught:
        client(fleet.b, forged).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_valid_key_in_x_api_key_header(fleet: Fleet) -> None:
    response = httpx.post(fleet.b + "/v1/completions", json=COMPLETION, timeout=10,
                          headers={"x-api-key": fleet.keys["acme"]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0


def test_model_not_allowed_is_403_and_unserved_model_is_404(fleet: Fleet) -> None:
    acme = client(fleet.a, fleet.keys["acme"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        acme.chat.completions.create(model=PRIVATE_MODEL, messages=CHAT, max_tokens=2)
    assert denied.value.status_code == 403 and denied.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        acme.chat.completions.create(model="not-served-anywhere", messages=CHAT, max_tokens=2)
    assert missing.value.status_code == 404 and missing.value.body["param"] == "model"  # type: ignore[index]
    response = httpx.post(fleet.a + "/v1/completions", headers=fleet.auth("acme"), timeout=10,
                          json={**COMPLETION, "model": PRIVATE_MODEL})
    assert openai_error(response, 403, "permission_error")["code"] == "model_not_allowed"
    assert [m.id for m in acme.models.list().data] == [MODEL]  # only what acme may use is listed
    metered = client(fleet.a, fleet.keys["metered"])
    assert sorted(m.id for m in metered.models.list().data) == sorted([MODEL, PRIVATE_MODEL])


def test_rate_limit_headers_on_non_stream_responses(fleet: Fleet) -> None:
    acme = client(fleet.a, fleet.keys["acme"])
    raw = acme.completions.with_raw_response.create(model=MODEL, prompt="Hello there", max_tokens=3)
    assert raw.status_code == 200 and raw.parse().usage is not None
    assert_rate_limit_headers(raw.headers, 100_000, 10_000_000)
    raw_chat = acme.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert_rate_limit_headers(raw_chat.headers, 100_000, 10_000_000)
    on_b = httpx.post(fleet.b + "/v1/completions", json=COMPLETION, headers=fleet.auth("acme"), timeout=10)
    assert on_b.status_code == 200
    assert_rate_limit_headers(on_b.headers, 100_000, 10_000_000)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_rate_limit_headers_come_before_the_first_sse_byte(fleet: Fleet, path: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 5, "stream": True}
    body |= {"messages": CHAT} if path.endswith("chat/completions") else {"prompt": "Tell me"}
    with httpx.stream("POST", fleet.b + path, json=body, headers=fleet.auth("acme"), timeout=10) as response:
        # Only the response head has been read so far: the headers are there before any body byte.
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_rate_limit_headers(response.headers, 100_000, 10_000_000)
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 1
    stream = client(fleet.a, fleet.keys["acme"]).completions.with_streaming_response.create(
        model=MODEL, prompt="Tell me", max_tokens=3, stream=True)
    with stream as raw:
        assert_rate_limit_headers(raw.headers, 100_000, 10_000_000)
        assert any(line.startswith("data: ") for line in raw.iter_lines())


@pytest.mark.parametrize(("path", "body"), [
    ("/generate", {"prompt": "Tell me", "max_tokens": 3, "stream": True}),
    ("/generate_stream", {"inputs": "Tell me", "parameters": {"max_new_tokens": 3}}),
])
def test_rate_limit_headers_on_native_and_tgi_streams(fleet: Fleet, path: str, body: dict[str, Any]) -> None:
    with httpx.stream("POST", fleet.a + path, json=body, headers=fleet.auth("acme"), timeout=10) as response:
        assert response.status_code == 200
        assert_rate_limit_headers(response.headers, 100_000, 10_000_000)
        assert any(line.startswith("data:") for line in response.iter_lines())


def test_over_the_limit_is_429_with_retry_after_on_both_replicas(fleet: Fleet) -> None:
    """Tenant "tight" may make 2 requests a minute, shared by the replicas: one on A, one on B, then
    both refuse, stream or not, with Retry-After and the rate-limit headers."""
    tight_a, tight_b = client(fleet.a, fleet.keys["tight"]), client(fleet.b, fleet.keys["tight"])
    ok = tight_a.completions.with_raw_response.create(model=MODEL, prompt="one", max_tokens=2)
    assert int(ok.headers["x-ratelimit-remaining-requests"]) == 1
    ok = tight_b.completions.with_raw_response.create(model=MODEL, prompt="two", max_tokens=2)
    assert int(ok.headers["x-ratelimit-remaining-requests"]) == 0
    for tight in (tight_a, tight_b):
        with pytest.raises(openai.RateLimitError) as caught:
            tight.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        error = caught.value
        assert error.status_code == 429 and error.code == "rate_limit_exceeded"
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 30  # one request refills in 30 s
        assert 0 < int(headers["retry-after-ms"]) <= 30_000
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert DURATION.match(headers["x-ratelimit-reset-requests"])
        assert all(name in headers for name in TOKEN_HEADERS)
    streamed = httpx.post(fleet.b + "/v1/completions", headers=fleet.auth("tight"), timeout=10,
                          json={**COMPLETION, "stream": True})
    assert openai_error(streamed, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
    assert int(streamed.headers["retry-after"]) >= 1 and "x-ratelimit-reset-requests" in streamed.headers
