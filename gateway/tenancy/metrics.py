"""Prometheus metrics of tenancy (auth and rate limits), registered on an injected registry. Labels
are bounded: tenant names come from config; never a key, key id or user in a label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from gateway.cached_metrics import CachedCounter, CachedHistogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class TenancyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = CachedCounter(
            "gateway_ratelimit_decisions", "Admission decisions by tenant and outcome "
            "(admitted, clamped, limited, unavailable)", ["tenant", "outcome"], registry=registry)
        self.limited = CachedCounter(
            "gateway_ratelimit_limited", "Refusals by the limit that refused "
            "(requests, tokens, daily_tokens, concurrency) and its scope (global, tenant, model, key)",
            ["tenant", "limit", "scope"], registry=registry)
        self.admit_seconds = CachedHistogram(
            "gateway_ratelimit_admit_seconds", "Time the limiter adds to a request at admission, by "
            "the store that answered", ["store"], buckets=LATENCY_BUCKETS, registry=registry)
        self.settled_tokens = CachedCounter(
            "gateway_ratelimit_settled_tokens", "Real tokens (prompt + completion) settled, by tenant",
            ["tenant"], registry=registry)
        self.refunded_tokens = CachedCounter(
            "gateway_ratelimit_refunded_tokens", "Reserved tokens given back at settlement, by tenant",
            ["tenant"], registry=registry)
        self.settle_failures = CachedCounter(
            "gateway_ratelimit_settle_failures", "Settlements the store could not record (the "
            "reservation stays charged, the concurrency lease expires)", registry=registry)
        self.store_errors = CachedCounter(
            "gateway_ratelimit_store_errors", "Redis calls that failed, by operation",
            ["operation"], registry=registry)
        self.fallbacks = CachedCounter(
            "gateway_ratelimit_fallback", "Operations served by the in-memory limiter because Redis "
            "failed (fail_open)", ["operation"], registry=registry)
        self.incidents = CachedCounter(
            "gateway_ratelimit_store_incidents", "Redis outages seen (one per incident)", registry=registry)
        self.store_up = Gauge(
            "gateway_ratelimit_store_up", "1 while the limiter store answers, 0 during an incident",
            registry=registry)
        self.speculations = CachedCounter(
            "gateway_ratelimit_speculative_admissions", "Requests whose engine request started while the "
            "store decided, by the store's answer (admitted; limited or unavailable: the engine request "
            "was cancelled)", ["outcome"], registry=registry)
        self.active_leases = Gauge(
            "gateway_ratelimit_active_leases", "Admitted requests not yet settled on this replica",
            registry=registry)
        self.auth_failures = CachedCounter(
            "gateway_auth_failures", "Refused API keys by reason (missing, invalid, revoked, "
            "unavailable, model_not_allowed)", ["reason"], registry=registry)
        self.auth_enabled = Gauge(
            "gateway_auth_enabled", "1 when API keys are required, 0 when auth is disabled",
            registry=registry)
        self.store_up.set(1)
