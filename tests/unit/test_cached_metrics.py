"""CachedCounter/CachedHistogram: the same child for the same label values, counted in the registry
as prometheus_client counts it, and forgotten on remove/clear."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.cached_metrics import CachedCounter, CachedHistogram


def test_labels_returns_the_same_child_and_counts_in_the_registry() -> None:
    registry = CollectorRegistry()
    counter = CachedCounter("t_requests_total", "doc", ["model", "outcome"], registry=registry)
    first = counter.labels("m", "ok")
    assert counter.labels("m", "ok") is first
    first.inc()
    counter.labels("m", "ok").inc(2)
    counter.labels(model="m", outcome="error").inc()
    assert registry.get_sample_value("t_requests_total", {"model": "m", "outcome": "ok"}) == 3
    assert registry.get_sample_value("t_requests_total", {"model": "m", "outcome": "error"}) == 1


def test_remove_and_clear_forget_the_cached_children() -> None:
    registry = CollectorRegistry()
    histogram = CachedHistogram("t_seconds", "doc", ["backend"], registry=registry, buckets=(1.0,))
    histogram.labels("a").observe(0.5)
    histogram.remove("a")
    assert registry.get_sample_value("t_seconds_count", {"backend": "a"}) is None
    histogram.labels("a").observe(0.5)  # a fresh child, exported again
    assert registry.get_sample_value("t_seconds_count", {"backend": "a"}) == 1
    histogram.clear()
    assert registry.get_sample_value("t_seconds_count", {"backend": "a"}) is None
    histogram.labels("a").observe(2.0)
    assert registry.get_sample_value("t_seconds_count", {"backend": "a"}) == 1
