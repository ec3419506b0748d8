"""A Lease is one admitted request's claim on its limits: the rate-limit headers to send before the
first byte, the (possibly clamped) max_tokens to ask the engine for, and a settlement that happens
exactly once whichever of stream end, failure or client disconnect calls it first.

Settlement charges the real usage: the reservation (prompt estimate + max_tokens) is replaced by
prompt_tokens + completion_tokens, refunding or charging the difference, and the concurrency slot is
released. ``release_unused`` is settle(0, 0): for a request that failed before the client got any
output (no backend, upstream error before the first token), nothing is charged but the request
itself (requests per minute are never refunded). A stream cut after output started is not
"unused": settle it with the engine's usage or, when the engine reported none, with the prompt
estimate and the tokens counted in the text already sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.tenancy.store import AdmitPlan, LimitStore

if TYPE_CHECKING:
    from gateway.tenancy.admission import Admission


class Lease:
    def __init__(self, admission: Admission, tenant: str, store: LimitStore | None, plan: AdmitPlan | None,
                 reserved_tokens: int, admitted_us: int, headers: dict[str, str],
                 max_tokens: int | None) -> None:
        self.tenant = tenant
        self.store = store
        self.plan = plan
        self.reserved_tokens = reserved_tokens
        self.admitted_us = admitted_us
        self.headers = headers
        self.max_tokens = max_tokens
        self._admission = admission
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Record the real usage. Idempotent: only the first call counts (also across tasks)."""
        if self._settled:
            return
        self._settled = True
        await self._admission._settle(self, max(0, prompt_tokens) + max(0, completion_tokens))

    async def release_unused(self) -> None:
        await self.settle(0, 0)
