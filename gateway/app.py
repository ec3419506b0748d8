"""The HTTP edge: the data plane (gateway/dataplane.py) for generation routes in front of a Litestar
app for the control routes; OpenAI-shaped errors for everything that goes wrong."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.dataplane import DataPlane
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from gateway.render_openai import models_list
from gateway.service import Gateway
from gateway.tenancy import admin_routes

log = logging.getLogger("gateway.app")

JSON = "application/json"


def _json(body: bytes | Mapping[str, Any], status: int = 200, headers: dict[str, str] | None = None
          ) -> Response[bytes]:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return Response(content=content, status_code=status, media_type=JSON, headers=headers)


def _error_response(error: GatewayError) -> Response[bytes]:
    return _json(error.to_body(), error.http_status, error.headers)


def create_app(gateway: Gateway, exposition: CollectorRegistry | None = None) -> DataPlane:
    """The whole ASGI app: the raw data plane for generation routes in front of ``control_app``."""
    control = control_app(gateway, exposition)
    return DataPlane(gateway, control)  # type: ignore[arg-type]  # Litestar's scope types


def control_app(gateway: Gateway, exposition: CollectorRegistry | None = None) -> Litestar:
    """Litestar for everything that is not a generation: models, health, readiness, metrics, stats,
    admin, and the OpenAI-shaped errors of unknown routes. ``/metrics`` renders ``exposition``, by
    default the gateway's own registry (a worker of ``serve --workers N`` passes one that merges
    every worker's metrics, see gateway/workers.py)."""
    max_body = gateway.settings.server.max_body_bytes
    exposed = exposition if exposition is not None else gateway.prometheus
    pipeline = gateway.pipeline

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
        return Response(content=generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)

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
        route_handlers=[models, health, ready, prometheus_metrics, stats, *admin_routes(gateway.admission)],
        exception_handlers={GatewayError: handle_gateway_error, HTTPException: handle_http_exception,
                            Exception: handle_unexpected},
        lifespan=[lifespan],
        request_max_body_size=max_body,
        openapi_config=None,
    )
