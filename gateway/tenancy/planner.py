"""Which limits apply to a request, and under which store keys: the global limits, the tenant's, the
tenant's extra limits for the model, and the key's own limits. Each scope contributes up to four
limits (requests/min, tokens/min, daily tokens, concurrent requests); a scope's key names are stable
across replicas so every replica charges the same counters.
"""

from __future__ import annotations

from gateway.tenancy.config import DAY_US, MINUTE_US, LimitsConfig, TenantConfig
from gateway.tenancy.store import PlannedLimit
from policies.ratelimit import Limit, LimitKind


def scope_limits(limits: LimitsConfig | None, scope: str, key_base: str) -> list[PlannedLimit]:
    if limits is None:
        return []
    planned: list[PlannedLimit] = []
    if limits.requests_per_minute:
        planned.append(PlannedLimit(f"{key_base}:rpm", Limit(LimitKind.REQUESTS, limits.requests_per_minute,
                                                             MINUTE_US), "requests", scope))
    if limits.tokens_per_minute:
        planned.append(PlannedLimit(f"{key_base}:tpm", Limit(LimitKind.TOKENS, limits.tokens_per_minute,
                                                             MINUTE_US), "tokens", scope))
    if limits.daily_tokens:
        planned.append(PlannedLimit(f"{key_base}:day", Limit(LimitKind.QUOTA, limits.daily_tokens, DAY_US),
                                    "daily_tokens", scope))
    if limits.concurrent_requests:
        concurrency = Limit(LimitKind.CONCURRENCY, limits.concurrent_requests)
        planned.append(PlannedLimit(f"{key_base}:conc", concurrency, "concurrency", scope))
    return planned


def plan_limits(prefix: str, global_limits: LimitsConfig, tenant: TenantConfig, model: str,
                key_id: str | None, key_limits: LimitsConfig | None) -> tuple[PlannedLimit, ...]:
    base = f"{prefix}rl:"
    return (*scope_limits(global_limits, "global", f"{base}g"),
            *scope_limits(tenant.limits, "tenant", f"{base}t:{tenant.name}"),
            *scope_limits(tenant.model_limits.get(model), "model", f"{base}t:{tenant.name}:m:{model}"),
            *scope_limits(key_limits, "key", f"{base}k:{key_id}"))


def ledger_key(prefix: str, tenant: str) -> str:
    return f"{prefix}ledger:t:{tenant}"
