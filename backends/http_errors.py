"""Turn an engine's refusal (HTTP status + message + param) into the gateway's error hierarchy.

Adapters parse their engine's error body shape themselves and call ``error_for_status``; this module
only knows HTTP semantics. Rules: the engine's 4xx are the client's fault and never fail over (keeping
the engine's message and ``param``); overload (429), unavailability (503), timeouts (504) and other
5xx fail over. An engine rejecting the gateway's own credentials (401/403) is a backend
misconfiguration, so it fails over as an upstream error instead of blaming the client's key.
"""

from __future__ import annotations

from typing import Any

import msgspec

from backends.sse import SseDecoder
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

MAX_ERROR_BODY = 64 * 1024


class EngineReportedError(Exception):
    """An error object the engine sent inside a stream (or as a body), not yet mapped."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(str(payload)[:500])
        self.payload = payload


class MalformedEventError(Exception):
    """An upstream event that is not what the engine's protocol promises."""


def decode_error_body(raw: bytes) -> Any:
    """Best-effort decode of an error body: JSON, the first ``data:`` of an SSE body, or the text."""
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith(("data:", "event:", ":")):
        events = SseDecoder().feed(raw + b"\n\n")
        if events:
            text = events[0].data
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def error_for_status(status: int, message: str, *, param: str | None = None,
                     not_found_is_model: bool = False) -> GatewayError:
    """The gateway error for an engine's non-2xx answer."""
    message = message or f"engine answered HTTP {status}"
    if status == 404:
        if not_found_is_model or param == "model":
            return NotFoundError(message, param="model")
        return UpstreamError(f"engine endpoint not found (HTTP 404): {message}")
    if status in (401, 403):
        return UpstreamError(f"engine refused the gateway's credentials (HTTP {status})")
    if status == 413:
        return PayloadTooLargeError(message, param=param)
    if status == 408:
        return UpstreamTimeoutError(f"engine timed out: {message}")
    if status == 429:
        return UpstreamUnavailableError(f"engine overloaded: {message}")
    if status == 424:  # Failed Dependency: the engine's own generation failed
        return UpstreamError(f"engine generation failed: {message}")
    if 400 <= status < 500:
        return InvalidRequestError(message, param=param)
    if status == 503:
        return UpstreamUnavailableError(f"engine unavailable: {message}")
    if status == 504:
        return UpstreamTimeoutError(f"engine timed out: {message}")
    return UpstreamError(f"engine error (HTTP {status}): {message}")


def text_of(value: Any) -> str:
    """A message string from whatever an engine put in its error field."""
    if value is None:
        return ""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()
