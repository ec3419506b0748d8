"""Which limits apply to a request, and under which store keys: the global limits, the tenant's, the
tenant's extra limits for the model, and the key's own limits. Each scope contributes up to four
limits (requests/min, tokens/min, daily tokens, concurrent requests); a scope's key names are stable
across replicas so every replica charges the same counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.tenancy.config import DAY_US, MINUTE_US, LimitsConfig, TenantConfig
from gateway.tenancy.store import PlannedLimit
from policies.ratelimit import Limit, LimitKind

_SPECULATABLE_KINDS = frozenset({LimitKind.REQUESTS, LimitKind.TOKENS})


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


@dataclass(frozen=True, slots=True)
class ScopePlan:
    """The limits of one (tenant, model, key) and what follows from them alone."""

    limits: tuple[PlannedLimit, ...]
    # Only per-minute request/token buckets, and no clamping on a token limit: speculation may apply.
    speculatable: bool
    # A token limit or daily quota applies (what clamping lowers max_tokens against).
    token_limited: bool


class PlanCache:
    """``plan_limits`` per (tenant, model, key id), made once: the answer depends only on config (the
    global limits, the tenant's, and ``key_limits``: each config key's own), and every request asks
    for it (twice with speculation). Bounded: emptied when it reaches ``max_entries`` (keys can be many:
    created through the admin API). Build a new one when config changes."""

    __slots__ = ("_entries", "_global_limits", "_key_limits", "_max_entries", "_prefix")

    def __init__(self, prefix: str, global_limits: LimitsConfig,
                 key_limits: Mapping[str, LimitsConfig | None], max_entries: int = 4096) -> None:
        self._prefix = prefix
        self._global_limits = global_limits
        self._key_limits = key_limits
        self._max_entries = max_entries
        self._entries: dict[tuple[str, str, str | None], ScopePlan] = {}

    def plan(self, tenant: TenantConfig, model: str, key_id: str | None) -> ScopePlan:
        entry_key = (tenant.name, model, key_id)
        entry = self._entries.get(entry_key)
        if entry is None:
            key_limits = self._key_limits.get(key_id) if key_id is not None else None
            limits = plan_limits(self._prefix, self._global_limits, tenant, model, key_id, key_limits)
            kinds = {planned.limit.kind for planned in limits}
            token_limited = bool(kinds & {LimitKind.TOKENS, LimitKind.QUOTA})
            speculatable = bool(limits) and kinds <= _SPECULATABLE_KINDS and not (
                tenant.clamp_max_tokens and token_limited)
            entry = ScopePlan(limits, speculatable, token_limited)
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[entry_key] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)
