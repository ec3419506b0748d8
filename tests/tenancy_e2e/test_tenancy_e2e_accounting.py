"""Token accounting through real gateway processes, checked against the tenant's ledger in Redis (net
tokens charged, leases not yet settled) and the engine's own counters (``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total`` of the one vLLM-dialect sim behind both replicas).

What is charged:
- a response that completes (any dialect, stream or not, usage shown to the client or not): exactly
  the usage the engine reported, prompt + completion tokens;
- a stream cut after output started, by the engine (``drop_after``/``error_after``) or by the client
  leaving: the engine reports no usage then, so the gateway charges its prompt estimate (four
  characters a token, what it reserved for the prompt) plus the text chunks it relayed;
- a request that failed before any output reached the client (the engine fails before its first
  token, or a non-stream generation breaks and no other backend can take it): no tokens (the
  request still counts against requests per minute).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.tenancy_e2e.conftest import Fleet
from tests.tenancy_e2e.helpers import (
    MODEL,
    Ledger,
    clear_fault,
    engine_tokens,
    estimate_tokens,
    metric,
    scrape,
    set_fault,
    settled_ledger,
    shared_redis,
)

TENANT = "metered"
CHAT: Any = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell a story."}]
PROMPT = "Tell me a long story about a lighthouse keeper and the sea"


@pytest.fixture
def ledger_client() -> Iterator[redis.Redis]:
    client = shared_redis()
    yield client
    client.close()


class Books:
    """Before/after readings of the tenant's ledger and the engine's counters."""

    def __init__(self, fleet: Fleet, client: redis.Redis) -> None:
        self.fleet = fleet
        self.client = client
        self.ledger = settled_ledger(client, fleet.prefix, TENANT)
        self.engine = engine_tokens(fleet.engine.url)

    def charged_since(self) -> tuple[int, Ledger]:
        ledger = settled_ledger(self.client, self.fleet.prefix, TENANT)
        return ledger.charged - self.ledger.charged, ledger

    def engine_since(self) -> tuple[int, int]:
        prompt, generated = engine_tokens(self.fleet.engine.url)
        return prompt - self.engine[0], generated - self.engine[1]


def settled_tokens_metric(fleet: Fleet) -> float:
    return sum(metric(scrape(url), "gateway_ratelimit_settled_tokens_total", tenant=TENANT)
               for url in (fleet.a, fleet.b))


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_completed_responses_charge_exactly_the_engines_usage(fleet: Fleet,
                                                              ledger_client: redis.Redis) -> None:
    books = Books(fleet, ledger_client)
    metric_before = settled_tokens_metric(fleet)
    on_a = openai.OpenAI(base_url=fleet.a + "/v1", api_key=fleet.keys[TENANT], max_retries=0)
    on_b = openai.OpenAI(base_url=fleet.b + "/v1", api_key=fleet.keys[TENANT], max_retries=0)
    usages = [on_a.completions.create(model=MODEL, prompt=PROMPT, max_tokens=7).usage,
              on_b.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5).usage,
              on_a.chat.completions.create(model=MODEL, messages=CHAT).usage]  # no max_tokens: 1024 reserved
    streamed = list(on_b.completions.create(model=MODEL, prompt=PROMPT, max_tokens=9, stream=True,
                                            stream_options={"include_usage": True}))
    usages.append(streamed[-1].usage)
    streamed_chat = list(on_a.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, stream=True,
                                                      stream_options={"include_usage": True}))
    usages.append(streamed_chat[-1].usage)
    reported = sum(u.prompt_tokens + u.completion_tokens for u in usages if u is not None)
    assert len([u for u in usages if u is not None]) == 5
    charged, _ = books.charged_since()
    engine_prompt, engine_generated = books.engine_since()
    print(f"\nusage in responses {reported}, charged {charged}, engine {engine_prompt} + {engine_generated}")
    assert charged == reported == engine_prompt + engine_generated

    # Responses whose usage the client never sees are charged the engine's usage all the same.
    books = Books(fleet, ledger_client)
    headers = fleet.auth(TENANT)
    assert len(list(on_b.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, stream=True))) > 1
    for url, path, body in (
            (fleet.a, "/generate", {"prompt": PROMPT, "max_tokens": 6}),
            (fleet.b, "/generate", {"prompt": PROMPT, "max_tokens": 5, "stream": True}),
            (fleet.a, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}),
            (fleet.b, "/generate_stream", {"inputs": PROMPT, "parameters": {"max_new_tokens": 7}})):
        response = httpx.post(url + path, json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
    charged, _ = books.charged_since()
    engine_prompt, engine_generated = books.engine_since()
    assert charged == engine_prompt + engine_generated > 0
    assert settled_tokens_metric(fleet) - metric_before == reported + charged  # the gateways' own count


@pytest.mark.parametrize("fault", ["drop_after", "error_after"])
def test_stream_cut_by_the_engine_charges_prompt_estimate_and_relayed_chunks(
        fleet: Fleet, ledger_client: redis.Redis, fault: str) -> None:
    books = Books(fleet, ledger_client)
    set_fault(fleet.engine.url, **{fault: 3}, count=1)
    try:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", fleet.a + "/v1/completions", json=body, headers=fleet.auth(TENANT),
                          timeout=10) as response:
            assert response.status_code == 200
            events = sse_events(response)
    finally:
        clear_fault(fleet.engine.url)
    relayed = [e for e in events if e.get("choices")]
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert not any(e.get("usage") for e in events)  # the engine reported no usage
    charged, ledger = books.charged_since()
    engine_prompt, engine_generated = books.engine_since()
    print(f"\n{fault}=3: relayed {len(relayed)} chunks, charged {charged} (prompt estimate "
          f"{estimate_tokens(PROMPT)}), engine {engine_prompt} + {engine_generated}")
    assert len(relayed) == 3 and ledger.open == 0
    assert charged == estimate_tokens(PROMPT) + len(relayed)
    assert engine_generated >= len(relayed)
    assert complete_ok(fleet, fleet.a)


def test_stream_cut_by_the_client_is_settled(fleet: Fleet, ledger_client: redis.Redis) -> None:
    books = Books(fleet, ledger_client)
    set_fault(fleet.engine.url, slow=0.05, count=1)  # 60 tokens take 3 s to send; the client leaves early
    received = 0
    try:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 60, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", fleet.b + "/v1/completions", json=body, headers=fleet.auth(TENANT),
                          timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("choices"):
                    received += 1
                if received == 3:
                    break  # leaving the block closes the connection mid-stream
    finally:
        clear_fault(fleet.engine.url)
    charged, ledger = books.charged_since()
    engine_prompt, engine_generated = books.engine_since()
    print(f"\nclient left after {received} chunks: charged {charged} (prompt estimate "
          f"{estimate_tokens(PROMPT)}), engine {engine_prompt} + {engine_generated}")
    assert ledger.open == 0 and received == 3
    # The prompt estimate and what the gateway relayed: at least what the client read, at most what
    # the engine generated (the sim generates at once and paces only the sending, so its counter says
    # 60), and far from the 60 tokens the whole stream would have cost.
    relayed = charged - estimate_tokens(PROMPT)
    assert received <= relayed <= engine_generated and relayed < 30
    assert complete_ok(fleet, fleet.b)


# (A non-stream request goes upstream whole: its drop after 2 tokens, 0.4 s in, is no stale keep-alive
# connection to retry on the same engine.)
@pytest.mark.parametrize(("stream", "fault"), [(False, {"status": 503}), (True, {"status": 503}),
                                               (True, {"drop_after": 0}),
                                               (False, {"drop_after": 2, "slow": 0.2})])
def test_failure_before_any_output_charges_no_tokens(fleet: Fleet, ledger_client: redis.Redis,
                                                     stream: bool, fault: dict[str, Any]) -> None:
    books = Books(fleet, ledger_client)
    set_fault(fleet.engine.url, **fault, count=1)
    try:
        response = httpx.post(fleet.a + "/v1/completions", headers=fleet.auth(TENANT), timeout=10, json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 10, "ignore_eos": True, "stream": stream})
    finally:
        clear_fault(fleet.engine.url)
    assert response.status_code in (502, 503), response.text
    charged, ledger = books.charged_since()
    _, engine_generated = books.engine_since()
    assert charged == 0 and ledger.open == 0
    assert engine_generated >= fault.get("drop_after", 0)  # work the client never got is not charged
    assert complete_ok(fleet, fleet.a)


def complete_ok(fleet: Fleet, url: str) -> bool:
    """The fleet still serves (and a failure streak does not open the only backend's breaker)."""
    response = httpx.post(url + "/v1/completions", timeout=10, headers=fleet.auth(TENANT),
                          json={"model": MODEL, "prompt": "ok?", "max_tokens": 2})
    return response.status_code == 200
