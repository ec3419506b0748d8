"""EngineAdapter for Hugging Face TGI (and the sim engine in its ``tgi`` dialect).

Chat goes to TGI's Messages API (``/v1/chat/completions``, OpenAI-shaped); completions go to the native
``/generate_stream`` with ``{"inputs", "parameters"}``, translated to TGI's rules: temperature 0 or
unset means greedy (``do_sample: false``, no temperature, since TGI rejects 0), ``top_p`` only when
0 < p < 1, at most 4 stop sequences, ``details: true`` for the usage. Only the ``extra`` parameters TGI
knows are passed on (vLLM's ``ignore_eos`` has no TGI equivalent and is dropped). Non-stream requests
are gathered from the stream too (``complete``).

Errors ``{"error", "error_type"}``, as a body or as a stream event (TGI answers a stream request with
200 and an error event for validation and overload): ``validation`` -> ``InvalidRequestError`` with the
offending ``param`` guessed from the message, ``overloaded`` -> ``UpstreamUnavailableError`` (fail
over), ``generation``/``incomplete_generation`` -> ``UpstreamError``. ``/metrics`` (``tgi_*``) plus
``/info`` (cached) become a ``BackendLoad``. All TGI names live here and in ``tgi_stream``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from backends.engine_http import (
    JSON_HEADERS,
    AdapterTimeouts,
    EngineTransport,
    collect,
    get_probe,
    open_event_stream,
    probe_health,
    relay,
    scrape_metrics,
)
from backends.http_errors import decode_error_body, error_for_status, text_of
from backends.tgi_stream import TgiChatStreamParser, TgiTokenStreamParser
from gateway.errors import GatewayError, InvalidRequestError
from gateway.loop_bound import LoopRef
from gateway.types import BackendLoad, Completed, EventBatch, GenerateRequest

SIM_FAULT_HEADER = "x-sim-fault"
MAX_STOP_SEQUENCES = 4

_QUEUE = "tgi_queue_size"
_BATCH = "tgi_batch_current_size"
_BATCH_TOKENS = "tgi_batch_current_max_tokens"

_ERROR_STATUS = {"validation": 422, "template_error": 422, "tool_error": 422, "overloaded": 429,
                 "generation": 424, "incomplete_generation": 500, "healthcheck": 503}
_NATIVE_EXTRAS = frozenset({"top_k", "repetition_penalty", "frequency_penalty", "typical_p", "truncate",
                            "watermark", "grammar", "adapter_id"})
_CHAT_EXTRAS = frozenset({"frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
                          "response_format", "tools", "tool_choice", "tool_prompt", "logit_bias"})
# TGI parameter names in validation messages -> the gateway's (OpenAI) parameter names.
_PARAM_NAMES = {"max_new_tokens": "max_tokens", "max_tokens": "max_tokens", "temperature": "temperature",
                "top_p": "top_p", "top_k": "top_k", "stop": "stop", "seed": "seed",
                "repetition_penalty": "repetition_penalty", "frequency_penalty": "frequency_penalty",
                "typical_p": "typical_p", "truncate": "truncate", "best_of": "best_of",
                "top_n_tokens": "top_n_tokens", "grammar": "grammar"}
_QUOTED = re.compile(r"`(\w+)`")


class TgiAdapter:
    """One TGI server at ``base_url``. ``max_batch_total_tokens`` (the launcher's
    ``--max-batch-total-tokens``) enables a KV usage estimate; TGI reports no cache numbers itself."""

    def __init__(self, base_url: str, transport: EngineTransport,
                 timeouts: AdapterTimeouts | None = None, *, max_batch_total_tokens: int | None = None,
                 api_key: str | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._transport = transport
        self._timeouts = timeouts or AdapterTimeouts()
        self._loop = LoopRef()
        self._max_batch_total_tokens = max_batch_total_tokens
        self._max_concurrent: int | None = None
        self._headers = dict(JSON_HEADERS)
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    async def complete(self, request: GenerateRequest) -> Completed:
        """The whole answer, gathered from the stream: TGI's non-stream ``/generate`` details have no
        prompt token count (``input_length`` comes only in stream details)."""
        return await collect(self.stream(request), self._timeouts)

    def stream(self, request: GenerateRequest) -> AsyncIterator[EventBatch]:
        """The engine's event batches for ``request`` (see ``EngineAdapter.stream``)."""
        if len(request.stop) > MAX_STOP_SEQUENCES:
            return _raise(InvalidRequestError(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are supported by this backend",
                param="stop"))
        headers = self._headers
        if request.fault is not None:
            headers = {**headers, SIM_FAULT_HEADER: request.fault}
        parser: TgiChatStreamParser | TgiTokenStreamParser
        if request.kind == "chat":
            path, body, parser = "/v1/chat/completions", chat_body(request), TgiChatStreamParser(request.stop)
        else:
            path, body, parser = "/generate_stream", native_body(request), TgiTokenStreamParser(request.stop)

        def error_for_response(status: int, raw: bytes) -> GatewayError:
            return map_error(decode_error_body(raw), status, request.kind)

        def error_for_report(payload: dict[str, Any]) -> GatewayError:
            return map_error(payload, None, request.kind)

        events = open_event_stream(self._transport, self._base + path, body, headers, self._timeouts,
                                   error_for_response, self._loop)
        return relay(events, parser, error_for_report, self._loop)

    async def health(self) -> bool:
        return await probe_health(self._transport, self._base, self._timeouts)

    async def load(self) -> BackendLoad:
        """Scrape ``/metrics`` (and ``/info`` once); raises a ``GatewayError`` when it cannot."""
        samples = await scrape_metrics(self._transport, self._base, self._timeouts,
                                       (_QUEUE, _BATCH, _BATCH_TOKENS), "TGI")
        if self._max_concurrent is None:
            await self._read_info()
        batch_tokens = samples.sum(_BATCH_TOKENS)
        kv_usage = None
        if batch_tokens is not None and self._max_batch_total_tokens:
            kv_usage = min(1.0, batch_tokens / self._max_batch_total_tokens)
        return BackendLoad(running=samples.sum(_BATCH) or 0.0, waiting=samples.sum(_QUEUE) or 0.0,
                           kv_cache_usage=kv_usage, max_concurrent=self._max_concurrent)

    async def _read_info(self) -> None:
        try:
            status, raw = await get_probe(self._transport, self._base + "/info", self._timeouts)
            info = msgspec.json.decode(raw) if status == 200 else None
        except (GatewayError, msgspec.DecodeError):
            return  # retried on the next scrape
        if not isinstance(info, dict):
            return
        if isinstance(info.get("max_concurrent_requests"), int):
            self._max_concurrent = info["max_concurrent_requests"]
        if self._max_batch_total_tokens is None and isinstance(info.get("max_batch_total_tokens"), int):
            self._max_batch_total_tokens = info["max_batch_total_tokens"]  # reported by older TGI

    async def aclose(self) -> None:
        """Nothing to release: the transport belongs to the composition root, streams close themselves."""


def native_body(request: GenerateRequest) -> bytes:
    """``/generate_stream`` body for a completion request."""
    parameters: dict[str, Any] = {k: v for k, v in request.extra.items() if k in _NATIVE_EXTRAS}
    if request.max_tokens is not None:
        parameters["max_new_tokens"] = request.max_tokens
    top_p = request.top_p if request.top_p is not None and 0 < request.top_p < 1 else None
    if request.temperature is not None and request.temperature > 0:
        parameters["do_sample"] = True
        parameters["temperature"] = request.temperature
        if top_p is not None:
            parameters["top_p"] = top_p
    elif request.temperature is None and top_p is not None:
        parameters["do_sample"] = True
        parameters["top_p"] = top_p
    else:
        parameters["do_sample"] = False
    if request.stop:
        parameters["stop"] = request.stop
    if request.seed is not None:
        parameters["seed"] = request.seed
    parameters["details"] = True
    return msgspec.json.encode({"inputs": request.prompt, "parameters": parameters})


def chat_body(request: GenerateRequest) -> bytes:
    """Messages API body for a chat request (TGI treats temperature 0 as greedy itself)."""
    body: dict[str, Any] = {k: v for k, v in request.extra.items() if k in _CHAT_EXTRAS}
    body["model"] = request.model
    body["messages"] = request.messages or []
    if request.continue_final_message:
        body["continue_final_message"] = True
    for name in ("max_tokens", "temperature", "seed"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.top_p is not None and 0 < request.top_p < 1:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = request.stop
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(body)


def map_error(payload: Any, status: int | None, kind: str) -> GatewayError:
    """Map TGI's ``{"error", "error_type"}`` (``status`` None: reported inside a stream)."""
    error_type: str | None = None
    if isinstance(payload, dict):
        message = text_of(payload.get("error") or payload.get("message") or payload.get("detail"))
        error_type = payload.get("error_type") if isinstance(payload.get("error_type"), str) else None
    else:
        message = text_of(payload)
    # The error type is more precise than the status (and a stream's error event has status 200).
    status = _ERROR_STATUS.get(error_type or "", status if status and status >= 400 else 500)
    param = guess_param(message, kind) if status in (400, 422) else None
    return error_for_status(status, message, param=param)


def guess_param(message: str, kind: str) -> str | None:
    """The request parameter a TGI validation message is about (first backquoted name it knows)."""
    for name in _QUOTED.findall(message):
        if name == "inputs":
            return "messages" if kind == "chat" else "prompt"
        if name in _PARAM_NAMES:
            return _PARAM_NAMES[name]
    return None


async def _raise(error: GatewayError) -> AsyncIterator[EventBatch]:
    raise error
    yield  # pragma: no cover  (makes this an async generator)
