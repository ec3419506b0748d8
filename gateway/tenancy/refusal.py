"""The message of a 429: which limit refused, in the words a client can act on."""

from __future__ import annotations

from gateway.tenancy.headers import format_duration
from gateway.tenancy.store import PlannedLimit

_UNITS = {"requests": "requests per minute", "tokens": "tokens per minute",
          "daily_tokens": "tokens per day", "concurrency": "concurrent requests"}
_WHOSE = {"global": "gateway-wide limit", "tenant": "limit of tenant {tenant}",
          "model": "per-model limit of tenant {tenant}", "key": "limit of this API key"}


def refusal_message(refused: PlannedLimit, tenant: str, cost_tokens: int, retry_after_us: int | None) -> str:
    whose = _WHOSE[refused.scope].format(tenant=repr(tenant))
    limit = f"the {whose} ({refused.limit.capacity} {_UNITS[refused.name]})"
    if retry_after_us is None:
        return f"Request too large: it needs {cost_tokens} tokens, more than {limit} allows at all."
    return f"Rate limit reached: {limit}. Retry after {format_duration(retry_after_us)}."
