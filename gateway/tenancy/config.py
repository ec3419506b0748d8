"""Tenancy settings (pydantic v2): tenants with allowed models and limits, API keys given as hashes,
the admin key, and where limits live (memory or Redis) and what happens when Redis fails.

The embedded default is a single unlimited tenant, auth disabled and the in-memory store, so a
local gateway works with no setup; every limit is opt-in.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.ratelimit import scaled_limit_ok

MINUTE_US = 60_000_000
DAY_US = 86_400_000_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsConfig(_Strict):
    """Limits of one scope. Unset means unlimited. Rates refill continuously (token bucket)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent_requests: int | None = Field(default=None, ge=1)
    daily_tokens: int | None = Field(default=None, ge=1, description="budget per UTC day")

    @model_validator(mode="after")
    def _exact(self) -> LimitsConfig:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not scaled_limit_ok(value, MINUTE_US):
                raise ValueError(f"{name}={value} is too large (at most 75,000,000)")
        return self

    @property
    def empty(self) -> bool:
        return not any((self.requests_per_minute, self.tokens_per_minute, self.concurrent_requests,
                        self.daily_tokens))


class TenantConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    # Model names or shell-style patterns ("llama-*"); ["*"] allows every served model.
    models: list[str] = Field(default_factory=lambda: ["*"])
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # Extra limits for one model, checked in addition to the tenant-wide ones.
    model_limits: dict[str, LimitsConfig] = Field(default_factory=dict)
    # Admit with max_tokens lowered to what the tenant has left instead of refusing.
    clamp_max_tokens: bool = False

    def allows(self, model: str) -> bool:
        # Asked on every request: "*" and exact names (the usual config) skip fnmatch's regex.
        return any(pattern == "*" or pattern == model or fnmatchcase(model, pattern)
                   for pattern in self.models)


class KeyConfig(_Strict):
    """An API key declared in config: its public id and the hash of the whole key, never the key."""

    id: str = Field(pattern=KEY_ID_PATTERN)
    hash: str = Field(pattern=HASH_PATTERN)
    tenant: str
    name: str = ""
    limits: LimitsConfig | None = None


class TenancyConfig(_Strict):
    auth_enabled: bool = False
    default_tenant: str = "default"  # who anonymous requests are when auth is disabled
    tenants: list[TenantConfig] = Field(default_factory=lambda: [TenantConfig(name="default")])
    keys: list[KeyConfig] = Field(default_factory=list)
    global_limits: LimitsConfig = Field(default_factory=LimitsConfig)
    admin_key_hashes: list[str] = Field(default_factory=list)

    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "llmgw:"
    # Bounds every Redis call; low enough that an outage costs little, high enough that a busy event
    # loop on a loaded host is not mistaken for one (0.1 s caused false fallbacks under load).
    redis_timeout_s: float = Field(default=0.25, gt=0, le=2)
    on_store_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    store_retry_s: float = Field(default=0.5, gt=0, description="after a Redis failure, skip it this long")

    lease_ttl_s: float = Field(default=30.0, gt=0, description="concurrency lease lifetime without heartbeat")
    max_request_s: float = Field(default=3600.0, gt=0, description="stop refreshing leases older than this")
    key_cache_ttl_s: float = Field(default=0.5, gt=0, le=1, description="revocation reaches replicas within")
    # Output tokens reserved when a request gives no max_tokens (settled to the real usage later).
    default_completion_reservation: int = Field(default=1024, ge=0)
    min_clamped_tokens: int = Field(default=16, ge=1)
    # With the Redis store, start the engine request while Redis decides the admission (its round trip
    # off the latency path); a refusal cancels it and the client gets the 429 as before. Only for
    # requests the store's last answer for their tenant/key/model left room for, under per-minute
    # limits only, without max_tokens clamping (gateway/tenancy/speculation.py).
    speculative_admission: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TenancyConfig:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        if not self.auth_enabled and self.default_tenant not in names:
            raise ValueError(f"default_tenant {self.default_tenant!r} is not a declared tenant")
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("API key ids must be unique")
        for key in self.keys:
            if key.tenant not in names:
                raise ValueError(f"key {key.id} belongs to unknown tenant {key.tenant!r}")
        for digest in self.admin_key_hashes:
            if re.fullmatch(HASH_PATTERN, digest) is None:
                raise ValueError("admin_key_hashes entries must look like sha256:<64 hex>")
        return self

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)
