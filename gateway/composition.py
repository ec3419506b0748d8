"""The composition root: the only module that knows the concrete engine adapters and routing policies.
It turns settings into a running ``Gateway``."""

from __future__ import annotations

from typing import Literal

import aiohttp
from prometheus_client import CollectorRegistry

from backends.engine_http import AdapterTimeouts, AiohttpTransport, EngineTransport, Http1Transport
from backends.http1 import Http1Client
from backends.tgi import TgiAdapter
from backends.vllm import VllmAdapter
from gateway.forwarder import Forwarder
from gateway.health import HealthMonitor
from gateway.metrics import BackendCollector, GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.registry import Backend, Registry
from gateway.service import Gateway
from gateway.settings import BackendConfig, ConfigError, GatewaySettings
from gateway.tenancy import Admission
from gateway.types import EngineAdapter
from policies.base import RoutingPolicy
from policies.registry import build_policy

KEEPALIVE_S = 30.0  # how long an idle upstream connection stays pooled


def build_transport(client: Literal["aiohttp", "http1"]) -> EngineTransport:
    """The HTTP client towards the engines (``upstream_client``); call inside the running loop."""
    if client == "http1":
        return Http1Transport(Http1Client(idle_s=KEEPALIVE_S))
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=KEEPALIVE_S)
    return AiohttpTransport(aiohttp.ClientSession(connector=connector, auto_decompress=False))


def build_adapter(config: BackendConfig, url: str, transport: EngineTransport,
                  timeouts: AdapterTimeouts) -> EngineAdapter:
    if config.dialect == "tgi":
        return TgiAdapter(url, transport, timeouts)
    return VllmAdapter(url, transport, timeouts)


def build_policies(settings: GatewaySettings) -> dict[str, RoutingPolicy]:
    """One policy instance per model; an unknown policy or option is a ``ConfigError``."""
    policies: dict[str, RoutingPolicy] = {}
    for model in settings.model_names:
        name = settings.routing.per_model.get(model, settings.routing.default_policy)
        try:
            policies[model] = build_policy(name, settings.routing.options.get(name, {}))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid config:\n  routing (model {model!r}): {exc}") from None
    return policies


def build_gateway(settings: GatewaySettings, urls: dict[str, str],
                  prometheus: CollectorRegistry | None = None) -> Gateway:
    """Build a gateway for ``settings``; ``urls`` gives each backend's base URL (launched sims included).
    Must be called inside the running event loop (it creates the HTTP client)."""
    prometheus = prometheus or CollectorRegistry()
    timeouts = AdapterTimeouts(
        connect_s=settings.timeouts.connect_s,
        first_token_s=settings.timeouts.first_token_s,
        idle_s=settings.timeouts.idle_s,
        probe_s=settings.timeouts.probe_s,
        whole_s=settings.timeouts.whole_s,
    )
    transport = build_transport(settings.upstream_client)
    registry = Registry(
        Backend(config=b, adapter=build_adapter(b, urls[b.name], transport, timeouts), url=urls[b.name],
                failures_to_open=settings.health.failures_to_open)
        for b in settings.backends
    )
    policy_names = {m: settings.routing.per_model.get(m, settings.routing.default_policy)
                    for m in settings.model_names}
    policies = build_policies(settings)
    metrics = GatewayMetrics(prometheus)
    prometheus.register(BackendCollector(registry))
    forwarder = Forwarder(registry, policies, policy_names, metrics,
                          whole_non_stream=settings.non_stream_upstream == "whole")
    admission = Admission(settings.tenancy, registry=prometheus)
    gateway = Gateway(
        settings=settings, registry=registry, forwarder=forwarder, metrics=metrics,
        prometheus=prometheus, monitor=HealthMonitor(registry, settings.health.interval_s),
        admission=admission, pipeline=Pipeline(registry, forwarder, admission, metrics),
    )
    gateway.closers += [transport.aclose, admission.aclose]
    return gateway
