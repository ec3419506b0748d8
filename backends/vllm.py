"""EngineAdapter for vLLM's OpenAI-compatible server (and the sim engine in its ``vllm`` dialect).

Requests go to ``/v1/chat/completions`` or ``/v1/completions``: streamed with
``stream_options.include_usage``, or whole for ``complete`` (vLLM's non-stream answer carries the
usage); vLLM's ``{"error": {"message", "type", "param", "code"}}`` bodies (and its older top-level
and ``{"detail"}`` shapes) are mapped to the gateway's errors keeping ``param``; ``/metrics``
(``vllm:*``) becomes a ``BackendLoad``. All vLLM names live here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from backends.engine_http import (
    JSON_HEADERS,
    AdapterTimeouts,
    EngineTransport,
    fetch_whole,
    open_event_stream,
    probe_health,
    relay,
    scrape_metrics,
)
from backends.http_errors import (
    EngineReportedError,
    MalformedEventError,
    decode_error_body,
    error_for_status,
    text_of,
)
from backends.openai_stream import OpenAiStreamParser, parse_whole
from gateway.errors import GatewayError, UpstreamError
from gateway.loop_bound import LoopRef
from gateway.types import BackendLoad, Completed, EventBatch, GenerateRequest

SIM_FAULT_HEADER = "x-sim-fault"

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = "vllm:kv_cache_usage_perc"
_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
_PREFIX_HITS = "vllm:prefix_cache_hits_total"
_PREEMPTIONS = "vllm:num_preemptions_total"
_CACHE_CONFIG = "vllm:cache_config_info"
_METRICS = (_RUNNING, _WAITING, _KV_USAGE, _PREFIX_QUERIES, _PREFIX_HITS, _PREEMPTIONS, _CACHE_CONFIG)


class VllmAdapter:
    """One vLLM server at ``base_url`` (e.g. ``http://10.0.0.5:8000``), over the shared ``transport``."""

    def __init__(self, base_url: str, transport: EngineTransport,
                 timeouts: AdapterTimeouts | None = None, *, api_key: str | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._transport = transport
        self._timeouts = timeouts or AdapterTimeouts()
        self._loop = LoopRef()
        self._headers = dict(JSON_HEADERS)
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._whole_headers = {**self._headers, "accept": "application/json"}

    def stream(self, request: GenerateRequest) -> AsyncIterator[EventBatch]:
        """The engine's event batches for ``request`` (see ``EngineAdapter.stream``)."""
        events = open_event_stream(self._transport, self._url(request), build_body(request),
                                   self._request_headers(request, self._headers), self._timeouts,
                                   error_for_response, self._loop)
        return relay(events, OpenAiStreamParser(), error_for_report, self._loop)

    async def complete(self, request: GenerateRequest) -> Completed:
        """The whole answer in one non-stream request (see ``EngineAdapter.complete``)."""
        raw = await fetch_whole(self._transport, self._url(request), build_body(request, stream=False),
                                self._request_headers(request, self._whole_headers), self._timeouts,
                                error_for_response, self._loop)
        try:
            return parse_whole(raw)
        except EngineReportedError as exc:
            raise error_for_report(exc.payload) from None
        except MalformedEventError as exc:
            raise UpstreamError(str(exc)) from None

    def _url(self, request: GenerateRequest) -> str:
        return self._base + ("/v1/chat/completions" if request.kind == "chat" else "/v1/completions")

    @staticmethod
    def _request_headers(request: GenerateRequest, headers: dict[str, str]) -> dict[str, str]:
        if request.fault is None:
            return headers
        return {**headers, SIM_FAULT_HEADER: request.fault}

    async def health(self) -> bool:
        return await probe_health(self._transport, self._base, self._timeouts)

    async def load(self) -> BackendLoad:
        """Scrape ``/metrics``; raises a ``GatewayError`` when the engine cannot be scraped."""
        samples = await scrape_metrics(self._transport, self._base, self._timeouts, _METRICS, "vLLM")
        block_size: int | None = None
        num_blocks: int | None = None
        for labels in samples.label_sets(_CACHE_CONFIG):
            block_size = block_size or _int_label(labels, "block_size")
            blocks = _int_label(labels, "num_gpu_blocks")
            if blocks is not None:
                num_blocks = (num_blocks or 0) + blocks
        return BackendLoad(
            running=samples.sum(_RUNNING) or 0.0,
            waiting=samples.sum(_WAITING) or 0.0,
            # A fraction per engine: the mean, not the sum, across data-parallel engines.
            kv_cache_usage=samples.mean(_KV_USAGE),
            prefix_cache_queries=samples.sum(_PREFIX_QUERIES),
            prefix_cache_hits=samples.sum(_PREFIX_HITS),
            preemptions=samples.sum(_PREEMPTIONS),
            block_size=block_size,
            num_blocks=num_blocks,
        )

    async def aclose(self) -> None:
        """Nothing to release: the transport belongs to the composition root, streams close themselves."""


def build_body(request: GenerateRequest, *, stream: bool = True) -> bytes:
    """The OpenAI request body for vLLM; ``extra`` first so it cannot switch streaming or usage off."""
    body: dict[str, Any] = dict(request.extra)
    body["model"] = request.model
    if request.kind == "chat":
        body["messages"] = request.messages or []
        if request.continue_final_message:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    else:
        body["prompt"] = request.prompt
    for name in ("max_tokens", "temperature", "top_p", "seed", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream_options", None)
    return msgspec.json.encode(body)


def error_for_response(status: int, raw: bytes) -> GatewayError:
    """Map a vLLM non-2xx answer."""
    return _from_payload(decode_error_body(raw), status)


def error_for_report(payload: dict[str, Any]) -> GatewayError:
    """Map an error object vLLM sent inside a stream."""
    return _from_payload(payload, None)


def _from_payload(payload: Any, status: int | None) -> GatewayError:
    message, param, code = "", None, None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):  # {"error": {"message", "type", "param", "code"}}
            message, param, code = text_of(error.get("message")), error.get("param"), error.get("code")
        elif payload.get("object") == "error":  # older vLLM: the same fields at the top level
            message, param, code = text_of(payload.get("message")), payload.get("param"), payload.get("code")
        else:  # {"error": "Unauthorized"}, FastAPI's {"detail": ...}
            message = text_of(error if error is not None else payload.get("detail"))
    else:
        message = text_of(payload)
    if status is None:
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
    param = _client_param(param)
    not_found_is_model = param == "model" or "model" in message.lower()
    return error_for_status(status, message, param=param, not_found_is_model=not_found_is_model)


def _client_param(param: Any) -> str | None:
    """vLLM's request-model validation names a location (``body.max_tokens``); clients want the field."""
    if not isinstance(param, str) or not param:
        return None
    field = param.removeprefix("body.")
    return None if field.isdigit() else field


def _int_label(labels: dict[str, str], name: str) -> int | None:
    try:
        return int(float(labels[name]))
    except (KeyError, ValueError):
        return None
