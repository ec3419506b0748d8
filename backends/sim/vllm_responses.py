"""Response bodies and stream chunks exactly as vLLM 0.32's OpenAI server writes them.

Stream chunks are assembled from pre-encoded byte fragments (one ``encode`` of the token text per
chunk), because they are written once per token per stream. Field order and the explicit nulls follow
recorded vLLM output (tests/data/vllm/*.sse): the finish chunk carries ``stop_reason``; without a usage
chunk it also carries ``system_fingerprint``, otherwise the usage chunk (``"choices": []``) does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from backends.sim.context import VLLM_VERSION
from backends.sim.http_common import encode
from backends.sim.request import SimRequest

SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-sim"
DONE = b"data: [DONE]\n\n"


def usage_body(request: SimRequest, chat: bool) -> dict[str, Any]:
    prompt, completion = request.num_prompt_tokens, request.num_output_tokens
    details: dict[str, Any] = {"cached_tokens": request.cached_tokens or 0}
    if chat:
        details["created_cache_tokens"] = 0
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": details}


class ChunkWriter:
    """Pre-encoded fragments of one stream's chunks."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.head = (b'data: {"id":"' + self.request_id.encode() + b'","object":"' + obj.encode()
                     + b'","created":' + str(int(time.time())).encode() + b',"model":' + encode(model)
                     + b',"choices":[')
        if chat:
            self._open = b'{"index":0,"delta":{"content":'
            self._middle = b'},"logprobs":null,"finish_reason":'
            self._tail = b',"token_ids":null}]'
        else:
            self._open = b'{"index":0,"text":'
            self._middle = b',"logprobs":null,"finish_reason":'
            self._tail = b',"prompt_token_ids":null,"token_ids":null}]'

    def role_chunk(self) -> bytes:
        return (self.head + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n')

    def token_chunk(self, text: str, usage: dict[str, Any] | None = None) -> bytes:
        stop = b"" if self.chat else b',"stop_reason":null'
        return (self.head + self._open + encode(text) + self._middle + b"null" + stop + self._tail
                + self._usage(usage) + b"}\n\n")

    def finish_chunk(self, text: str, request: SimRequest, usage: dict[str, Any] | None = None) -> bytes:
        finish = encode(request.finish_reason) + b',"stop_reason":' + encode(request.stop_reason)
        fingerprint = b"" if self.include_usage else b',"system_fingerprint":' + encode(SYSTEM_FINGERPRINT)
        return (self.head + self._open + encode(text) + self._middle + finish + self._tail
                + self._usage(usage) + fingerprint + b"}\n\n")

    def usage_chunk(self, request: SimRequest) -> bytes:
        return (self.head + b'],"usage":' + encode(usage_body(request, self.chat))
                + b',"system_fingerprint":' + encode(SYSTEM_FINGERPRINT) + b"}\n\n")

    @staticmethod
    def _usage(usage: dict[str, Any] | None) -> bytes:
        return b"" if usage is None else b',"usage":' + encode(usage)


def error_event(body: dict[str, Any]) -> bytes:
    return b"data: " + encode(body) + b"\n\n" + DONE


def _full_usage(request: SimRequest, chat: bool) -> dict[str, Any]:
    usage = usage_body(request, chat)
    details = usage["prompt_tokens_details"]
    details.setdefault("created_cache_tokens", None)
    details["multimodal_tokens"] = None
    usage["completion_tokens_details"] = None
    return usage


def completion_body(request: SimRequest, model: str, text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-" + uuid.uuid4().hex[:16], "object": "text_completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": request.finish_reason,
                     "stop_reason": request.stop_reason, "token_ids": None, "prompt_logprobs": None,
                     "prompt_token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": _full_usage(request, chat=False),
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }


def chat_body(request: SimRequest, model: str, text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
               "function_call": None, "reasoning": None}
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:16], "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": request.finish_reason,
                     "stop_reason": request.stop_reason, "token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": _full_usage(request, chat=True),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }


def models_body(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    permission = {"id": "modelperm-" + uuid.uuid4().hex[:16], "object": "model_permission",
                  "created": created,
                  "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                  "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                  "organization": "*", "group": None, "is_blocking": False}
    card = {"id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": max_model_len, "permission": [permission]}
    return {"object": "list", "data": [card]}
