"""PlanCache: the same limits plan_limits gives, made once per (tenant, model, key), bounded, and
what speculation and clamping need to know about them."""

from __future__ import annotations

from gateway.tenancy.config import LimitsConfig, TenantConfig
from gateway.tenancy.planner import PlanCache, plan_limits

NO_GLOBAL = LimitsConfig()


def tenant(**fields: object) -> TenantConfig:
    return TenantConfig.model_validate({"name": "acme", **fields})


def test_the_cached_plan_is_plan_limits_and_is_made_once() -> None:
    acme = tenant(limits={"requests_per_minute": 60, "tokens_per_minute": 1000},
                  model_limits={"m": {"tokens_per_minute": 500}})
    key_limits = LimitsConfig(requests_per_minute=5)
    cache = PlanCache("p:", NO_GLOBAL, {"k1": key_limits, "k2": None})
    plan = cache.plan(acme, "m", "k1")
    assert plan.limits == plan_limits("p:", NO_GLOBAL, acme, "m", "k1", key_limits)
    assert [p.scope for p in plan.limits] == ["tenant", "tenant", "model", "key"]
    assert cache.plan(acme, "m", "k1") is plan
    assert cache.plan(acme, "other", "k1").limits != plan.limits  # no model limits there
    assert [p.scope for p in cache.plan(acme, "m", "k2").limits] == ["tenant", "tenant", "model"]
    assert cache.plan(acme, "m", None).limits == cache.plan(acme, "m", "unknown-key").limits
    assert plan.speculatable and plan.token_limited


def test_speculation_only_on_per_minute_buckets_and_not_when_clamping_tokens() -> None:
    cache = PlanCache("p:", NO_GLOBAL, {})
    assert not cache.plan(tenant(), "m", None).speculatable  # no limits: nothing to hide
    assert not cache.plan(tenant(name="c", limits={"concurrent_requests": 2}), "m", None).speculatable
    assert not cache.plan(tenant(name="d", limits={"daily_tokens": 10}), "m", None).speculatable
    clamped = tenant(name="e", clamp_max_tokens=True, limits={"tokens_per_minute": 100})
    assert not cache.plan(clamped, "m", None).speculatable
    clamped_rpm_only = tenant(name="f", clamp_max_tokens=True, limits={"requests_per_minute": 100})
    plan = cache.plan(clamped_rpm_only, "m", None)
    assert plan.speculatable and not plan.token_limited


def test_the_cache_stays_under_its_bound() -> None:
    acme = tenant(limits={"requests_per_minute": 60})
    cache = PlanCache("p:", NO_GLOBAL, {}, max_entries=8)
    for n in range(100):
        cache.plan(acme, "m", f"key{n}")
        assert len(cache) <= 8
