"""OpenAI-format output: SSE chunks relayed one to one from engine events, the usage chunk, the SSE
error event, and whole (non-stream) responses aggregated from the same events."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import msgspec

from gateway.errors import GatewayError
from gateway.types import Delta, GenerateRequest, Usage

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def usage_body(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return body


class ResponseIds:
    """Unique response ids: a random per-process half and a counter, 32 hex digits like a UUID's.
    Why not uuid4 per response: its urandom call and UUID object cost ~2% of a request's CPU, and
    nothing needs these ids to be unguessable, only unique (across replicas too: the random half)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


class OpenAIRenderer:
    """Renders one request's events; ids and timestamps are fixed per request."""

    __slots__ = ("_chat", "_head", "created", "id", "model")

    def __init__(self, request: GenerateRequest, response_id: str) -> None:
        self._chat = request.kind == "chat"
        self.id = ("chatcmpl-" if self._chat else "cmpl-") + response_id
        self.created = int(time.time())
        self.model = request.model
        self._head = {
            "id": self.id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }

    def chunk(self, delta: Delta) -> bytes:
        choice: dict[str, Any]
        if self._chat:
            message: dict[str, Any] = {"content": delta.text}
            if delta.role is not None:
                message = {"role": delta.role, "content": delta.text}
            choice = {"index": 0, "delta": message, "logprobs": None, "finish_reason": delta.finish_reason}
        else:
            choice = {"index": 0, "text": delta.text, "logprobs": None, "finish_reason": delta.finish_reason}
        return b"data: " + _encode({**self._head, "choices": [choice]}) + b"\n\n"

    def usage_chunk(self, usage: Usage) -> bytes:
        return b"data: " + _encode({**self._head, "choices": [], "usage": usage_body(usage)}) + b"\n\n"

    @staticmethod
    def error_event(error: GatewayError) -> bytes:
        return b"data: " + _encode(error.to_body()) + b"\n\n"

    def response(self, text: str, finish_reason: str | None, usage: Usage | None) -> bytes:
        if self._chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            kind = "text_completion"
        body: dict[str, Any] = {
            "id": self.id, "object": kind, "created": self.created, "model": self.model,
            "choices": [choice],
        }
        if usage is not None:
            body["usage"] = usage_body(usage)
        return _encode(body)


def models_list(names: list[str], created: int) -> bytes:
    return _encode({
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "llm-gateway"} for n in names],
    })
