"""ResponseIds: unique, UUID-sized ids, different across instances (replicas)."""

from __future__ import annotations

import re

from gateway.render_openai import OpenAIRenderer, ResponseIds
from gateway.types import GenerateRequest


def test_ids_are_unique_and_shaped_like_uuid_hex() -> None:
    ids = ResponseIds()
    made = [ids.next() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in made)
    assert ResponseIds().next()[:16] != ids.next()[:16]  # another process's random half


def test_renderer_ids_carry_the_openai_prefixes() -> None:
    ids = ResponseIds()
    chat = GenerateRequest(model="m", prompt="", messages=[{"role": "user", "content": "hi"}], kind="chat")
    completion = GenerateRequest(model="m", prompt="hi", kind="completion")
    assert OpenAIRenderer(chat, ids.next()).id.startswith("chatcmpl-")
    assert OpenAIRenderer(completion, ids.next()).id.startswith("cmpl-")
