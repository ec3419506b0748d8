"""Output for the non-OpenAI dialects, from the same engine events: the native ``/generate``
(``{text, tokens, finish_reason}``) and TGI's ``/generate`` and ``/generate_stream`` formats."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import GatewayError

_encode = msgspec.json.Encoder().encode

# OpenAI finish reasons back to TGI's.
_TGI_FINISH = {"stop": "eos_token", "length": "length"}


def tgi_finish_reason(finish_reason: str | None, stop_sequences: list[str], text: str) -> str:
    if finish_reason == "stop" and stop_sequences:
        return "stop_sequence"
    return _TGI_FINISH.get(finish_reason or "length", "eos_token")


def native_response(text: str, tokens: int, finish_reason: str | None) -> bytes:
    return _encode({"text": text, "tokens": tokens, "finish_reason": finish_reason})


def native_delta(text: str) -> bytes:
    return b"data: " + _encode({"text": text}) + b"\n\n"


def native_final(text: str, tokens: int, finish_reason: str | None) -> bytes:
    return b"data: " + _encode({"text": text, "finish_reason": finish_reason, "tokens": tokens}) + b"\n\n"


def native_error(error: GatewayError) -> bytes:
    return b"data: " + _encode(error.to_body()) + b"\n\n"


def tgi_response(text: str, details: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"generated_text": text}
    if details is not None:
        body["details"] = details
    return body


def tgi_stream_token(index: int, text: str, *, generated_text: str | None = None,
                     details: dict[str, Any] | None = None, special: bool = False) -> bytes:
    event = {
        "index": index,
        "token": {"id": index, "text": text, "logprob": 0.0, "special": special},
        "generated_text": generated_text,
        "details": details,
        "top_tokens": None,
    }
    return b"data: " + _encode(event) + b"\n\n"


def tgi_error_body(error: GatewayError) -> dict[str, str]:
    return {"error": error.message, "error_type": _tgi_error_type(error)}


def tgi_error_event(error: GatewayError) -> bytes:
    return b"data: " + _encode(tgi_error_body(error)) + b"\n\n"


def _tgi_error_type(error: GatewayError) -> str:
    if error.http_status in (400, 413, 422):
        return "validation"
    if error.http_status == 429:
        return "overloaded"
    return "generation"
