"""The HTTP edge (Litestar): every client dialect's routes, parsed once into ``GenerateRequest``,
forwarded, and rendered back; OpenAI-shaped errors for everything that goes wrong."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.client_schemas import decode_json, parse_chat, parse_completion, parse_native, parse_tgi
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from gateway.relay import relay_native, relay_openai, relay_tgi
from gateway.render_openai import OpenAIRenderer, models_list
from gateway.render_text import native_response, tgi_error_body, tgi_finish_reason, tgi_response
from gateway.service import Gateway
from gateway.tenancy import Principal, admin_routes
from gateway.types import GenerateRequest

log = logging.getLogger("gateway.app")

JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Which backend served the request (a config name, never a URL): for operators and routing tests.
BACKEND_HEADER = "x-llm-gateway-backend"


def _json(body: bytes | Mapping[str, Any], status: int = 200, headers: dict[str, str] | None = None
          ) -> Response[bytes]:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return Response(content=content, status_code=status, media_type=JSON, headers=headers)


def _error_response(error: GatewayError) -> Response[bytes]:
    return _json(error.to_body(), error.http_status, error.headers)


def _tgi_error_response(error: GatewayError) -> Response[bytes]:
    status = 422 if error.http_status in (400, 413) else error.http_status
    return _json(tgi_error_body(error), status, error.headers)


def create_app(gateway: Gateway) -> Litestar:
    metrics = gateway.metrics
    max_body = gateway.settings.server.max_body_bytes
    pipeline = gateway.pipeline

    async def read_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise PayloadTooLargeError(f"request body of {length} bytes is over the {max_body}-byte limit")
        return decode_json(await request.body())

    async def openai(http: Request[Any, Any, Any], parse: Callable[[dict[str, Any]], GenerateRequest],
                     dialect: str) -> Response[Any]:
        started = time.perf_counter()
        principal = await pipeline.authenticate(http.headers)
        request = parse(await read_json(http))
        lease = await pipeline.admit(principal, request)
        on_done = pipeline.on_done(request, dialect, lease, started)
        renderer = OpenAIRenderer(request)
        if request.stream:
            attempt = await pipeline.open(request, lease, http.headers)
            return Stream(relay_openai(attempt, request, renderer, metrics, on_done),
                          media_type="text/event-stream",
                          headers={**SSE_HEADERS, **lease.headers, BACKEND_HEADER: attempt.backend.name})
        result = await pipeline.complete(request, lease, http.headers, on_done)
        return _json(renderer.response(result.text, result.finish_reason, result.usage),
                     headers={**lease.headers, BACKEND_HEADER: result.backend})

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await openai(request, parse_chat, "openai_chat")

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await openai(request, parse_completion, "openai_completion")

    async def tgi(http: Request[Any, Any, Any], stream: bool | None, compat: bool = False,
                  data: dict[str, Any] | None = None) -> Response[Any]:
        """TGI's routes answer in TGI's own error shape (``{"error", "error_type"}``, 422 for bad input)."""
        started = time.perf_counter()
        try:
            principal = await pipeline.authenticate(http.headers)
            if data is None:
                data = await read_json(http)
            parsed = parse_tgi(data, gateway.settings.default_model, stream=stream)
            request = parsed.request
            lease = await pipeline.admit(principal, request)
            on_done = pipeline.on_done(request, "tgi", lease, started)
            if request.stream:
                attempt = await pipeline.open(request, lease, http.headers)
                return Stream(relay_tgi(attempt, request, on_done), media_type="text/event-stream",
                              headers={**SSE_HEADERS, **lease.headers})
            result = await pipeline.complete(request, lease, http.headers, on_done)
        except GatewayError as exc:
            return _tgi_error_response(exc)
        tokens = result.usage.completion_tokens if result.usage else 0
        details = None
        if parsed.details:
            details = {"finish_reason": tgi_finish_reason(result.finish_reason, request.stop, result.text),
                       "generated_tokens": tokens, "seed": request.seed, "prefill": [], "tokens": []}
        text = (request.prompt + result.text) if parsed.return_full_text else result.text
        body = tgi_response(text, details)
        return _json(msgspec.json.encode([body] if compat else body), headers=lease.headers)

    async def native(http: Request[Any, Any, Any], data: dict[str, Any], principal: Principal
                     ) -> Response[Any]:
        started = time.perf_counter()
        request = parse_native(data, gateway.settings.default_model)
        lease = await pipeline.admit(principal, request)
        on_done = pipeline.on_done(request, "native", lease, started)
        if request.stream:
            attempt = await pipeline.open(request, lease, http.headers)
            return Stream(relay_native(attempt, request, on_done), media_type="text/event-stream",
                          headers={**SSE_HEADERS, **lease.headers})
        result = await pipeline.complete(request, lease, http.headers, on_done)
        tokens = result.usage.completion_tokens if result.usage else 0
        return _json(native_response(result.text, tokens, result.finish_reason), headers=lease.headers)

    @post("/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Response[Any]:
        """The native dialect, or TGI's when the body has ``inputs``."""
        data = await read_json(request)
        if "inputs" in data:
            return await tgi(request, stream=None, data=data)
        principal = await pipeline.authenticate(request.headers)
        return await native(request, data, principal)

    @post("/generate_stream", status_code=200)
    async def generate_stream(request: Request[Any, Any, Any]) -> Response[Any]:
        return await tgi(request, stream=True)

    @post("/", status_code=200)
    async def tgi_compat(request: Request[Any, Any, Any]) -> Response[Any]:
        return await tgi(request, stream=None, compat=True)

    @get("/v1/models")
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        principal = await pipeline.authenticate(request.headers)
        return _json(models_list(gateway.admission.allowed_models(principal, gateway.registry.models),
                                 gateway.started_at))

    @get("/health")
    async def health() -> Response[bytes]:
        return _json({"status": "ok"})

    @get("/ready")
    async def ready() -> Response[bytes]:
        per_model = gateway.registry.ready()
        ok = all(per_model.values()) and bool(per_model)
        return _json({"ready": ok, "models": per_model}, 200 if ok else 503)

    @get("/metrics")
    async def prometheus_metrics() -> Response[bytes]:
        return Response(content=generate_latest(gateway.prometheus), media_type=CONTENT_TYPE_LATEST)

    @get("/stats")
    async def stats() -> Response[bytes]:
        backends = {}
        total = {"running": 0.0, "waiting": 0.0, "preemptions": 0.0, "in_flight": 0}
        for backend in gateway.registry:
            load = backend.load
            backends[backend.name] = {
                "healthy": not backend.breaker_open, "in_flight": backend.in_flight,
                "running": load.running, "waiting": load.waiting, "kv_cache_usage": load.kv_cache_usage,
                "preemptions": load.preemptions,
                "prefix_cache_hit_ratio": (load.prefix_cache_hits or 0.0) / load.prefix_cache_queries
                if load.prefix_cache_queries else None,
            }
            total["running"] += load.running
            total["waiting"] += load.waiting
            total["preemptions"] += load.preemptions or 0.0
            total["in_flight"] += backend.in_flight
        return _json({"backends": backends, "total": total})

    def handle_gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
        return _error_response(exc)

    def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        error: GatewayError
        if exc.status_code == 413:
            error = PayloadTooLargeError(f"request body is over the {max_body}-byte limit")
        elif exc.status_code == 404:
            error = NotFoundError(f"no route {exc.detail}", code="not_found")
        elif exc.status_code == 405:
            error = InvalidRequestError("method not allowed", code="method_not_allowed", status=405)
        else:
            error = InvalidRequestError(str(exc.detail), status=exc.status_code)
        return _error_response(error)

    def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(GatewayError("internal error"))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Litestar(
        route_handlers=[chat_completions, completions, generate, generate_stream, tgi_compat, models,
                        health, ready, prometheus_metrics, stats, *admin_routes(gateway.admission)],
        exception_handlers={GatewayError: handle_gateway_error, HTTPException: handle_http_exception,
                            Exception: handle_unexpected},
        lifespan=[lifespan],
        request_max_body_size=max_body,
        openapi_config=None,
    )
