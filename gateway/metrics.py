"""Prometheus metrics of the gateway, on an injected registry (so tests can build many apps).

Request, upstream, policy and failover families are updated on the hot path; backend families
(health, breaker, in-flight and the engine's own normalized numbers) are read from the registry of
backends at scrape time. Labels are bounded: model, backend, dialect, outcome, branch, reason; never
a user id, key or URL.

Under ``serve --workers N`` (gateway/workers.py) every worker keeps its values in prometheus_client's
multiprocess files, named by worker index, and ``/metrics`` on any worker merges them
(``WorkersCollector``): counters and histograms are totals over all workers; the backend gauges are
published by each worker (``BackendGaugePublisher``) as ``gateway_backend_in_flight`` summed over
live workers, the engine-reported numbers (running, waiting, KV usage, hit ratio, preemptions) as the
latest any worker scraped, and ``gateway_backend_healthy`` per worker (each worker has its own
breakers) with a ``worker`` label 0..N-1; the tenancy gauges (store up, active leases, auth enabled)
are per worker with the same label. Single-process mode has no ``worker`` label."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.cached_metrics import CachedCounter, CachedHistogram
from gateway.registry import Registry

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = CachedCounter(
            "gateway_requests", "Requests by outcome", ["model", "backend", "dialect", "outcome"],
            registry=registry)
        self.duration = CachedHistogram(
            "gateway_request_duration_seconds", "Request duration at the gateway", ["model", "dialect"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.ttft = CachedHistogram(
            "gateway_request_ttft_seconds", "Time to the first engine event", ["model", "backend"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.itl = CachedHistogram(
            "gateway_request_inter_token_seconds", "Gaps between relayed chunks", ["model"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.tokens = CachedCounter(
            "gateway_request_tokens", "Tokens by direction as engines reported",
            ["model", "backend", "direction"], registry=registry)
        self.upstream_errors = CachedCounter(
            "gateway_upstream_errors", "Failed upstream attempts", ["backend", "code"], registry=registry)
        self.failovers = CachedCounter(
            "gateway_failover", "Attempts moved to another backend", ["model", "reason"], registry=registry)
        self.decisions = CachedCounter(
            "gateway_policy_decisions", "Routing decisions by branch", ["model", "policy", "branch"],
            registry=registry)
        self.predicted_hit_blocks = CachedHistogram(
            "gateway_policy_predicted_hit_blocks", "Prefix blocks predicted cached on the chosen backend",
            ["model"], buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)


class BackendCollector(Collector):
    """Backend gauges read from the live registry of backends at scrape time."""

    def __init__(self, backends: Registry) -> None:
        self._backends = backends

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges = {
            "healthy": GaugeMetricFamily("gateway_backend_healthy", "1 when the breaker is closed",
                                         labels=["backend"]),
            "in_flight": GaugeMetricFamily("gateway_backend_in_flight", "Gateway requests in flight",
                                           labels=["backend"]),
            "running": GaugeMetricFamily("gateway_backend_running", "Engine-reported running requests",
                                         labels=["backend"]),
            "waiting": GaugeMetricFamily("gateway_backend_waiting", "Engine-reported waiting requests",
                                         labels=["backend"]),
            "kv": GaugeMetricFamily("gateway_backend_kv_cache_usage", "Engine KV cache usage (0..1)",
                                    labels=["backend"]),
            "hit": GaugeMetricFamily("gateway_backend_prefix_cache_hit_ratio",
                                     "Engine prefix cache hits / queries (tokens, cumulative)",
                                     labels=["backend"]),
            "preempt": GaugeMetricFamily("gateway_backend_preemptions",
                                         "Engine preemptions (cumulative)", labels=["backend"]),
        }
        for backend in self._backends:
            name = [backend.name]
            gauges["healthy"].add_metric(name, 0.0 if backend.breaker_open else 1.0)
            gauges["in_flight"].add_metric(name, float(backend.in_flight))
            load = backend.load
            gauges["running"].add_metric(name, load.running)
            gauges["waiting"].add_metric(name, load.waiting)
            if load.kv_cache_usage is not None:
                gauges["kv"].add_metric(name, load.kv_cache_usage)
            if load.prefix_cache_queries:
                gauges["hit"].add_metric(name, (load.prefix_cache_hits or 0.0) / load.prefix_cache_queries)
            if load.preemptions is not None:
                gauges["preempt"].add_metric(name, load.preemptions)
        yield from gauges.values()


GaugeMode = Literal["all", "livesum", "livemostrecent"]
# How each backend gauge combines over workers; any other is the latest value a worker published.
_WORKER_MODES: Mapping[str, GaugeMode] = MappingProxyType({
    "gateway_backend_healthy": "all", "gateway_backend_in_flight": "livesum"})


def use_worker_files(worker: int) -> None:
    """In a worker process, before its first metric exists (PROMETHEUS_MULTIPROC_DIR set): keep values
    in files named by worker index instead of pid, so gauge series carry a bounded ``worker`` label
    and a replacement worker continues its predecessor's counters (the supervisor removes only the
    dead worker's gauge files)."""
    values.ValueClass = values.MultiProcessValue(lambda: worker)  # type: ignore[no-untyped-call]


class BackendGaugePublisher:
    """Copies this worker's backend gauges (``BackendCollector``) into the multiprocess files, where
    a scrape answered by any worker reads them."""

    def __init__(self, collector: BackendCollector) -> None:
        self._collector = collector
        self._gauges: dict[str, Gauge] = {}

    def publish(self) -> None:
        for family in self._collector.collect():
            gauge = self._gauges.get(family.name)
            if gauge is None:
                gauge = self._gauges[family.name] = Gauge(
                    family.name, family.documentation, ["backend"], registry=None,
                    multiprocess_mode=_WORKER_MODES.get(family.name, "livemostrecent"))
            for sample in family.samples:
                gauge.labels(**sample.labels).set(sample.value)


class WorkersCollector(Collector):
    """``/metrics`` of a worker: every worker's multiprocess files merged (after publishing this
    worker's backend gauges afresh), with prometheus_client's ``pid`` label, which holds the worker
    index here, renamed ``worker``."""

    def __init__(self, path: str, publisher: BackendGaugePublisher) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self._publisher = publisher

    def collect(self) -> Iterator[Metric]:
        self._publisher.publish()
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            metric.samples = [
                sample._replace(labels={("worker" if k == "pid" else k): v for k, v in sample.labels.items()})
                for sample in metric.samples]
            yield metric
