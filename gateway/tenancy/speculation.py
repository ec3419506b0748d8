"""Speculative admission's budget: how many requests (and tokens) this replica may send to an engine
before the limit store has decided on them, per admission scope (tenant, key, model).

Why: with the Redis store, the admission's round trip is on every request's latency path (about a
quarter of a millisecond on loopback, half the gateway's added latency at concurrency 1). The pipeline
may start the engine request while the store decides, and cancel it if the store refuses; what the
client gets is decided by the store exactly as before. This budget keeps a refused request from ever
being the common case: a scope may speculate only while the store's last answer for it left room for
more than the speculations still undecided. It knows nothing until a first admission reports (so the
first request of a scope waits), and nothing after a refusal (so an over-limit tenant's requests wait
for the store and cost the engines nothing). Other replicas spend the same buckets: the only cost of
their overlap is an engine request started and cancelled, never a request let through.

Memory is bounded: at most ``max_scopes`` scopes, least recently used dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

Scope = tuple[str, str, str]  # tenant, key id ("" when none), model


@dataclass(slots=True)
class _Room:
    requests: float  # left in the tightest requests-per-minute bucket at the last answer (inf: no limit)
    tokens: float  # the same for tokens
    pending_requests: int = 0  # speculations sent since and not yet decided
    pending_tokens: int = 0


class SpeculationBudget:
    __slots__ = ("_max_scopes", "_rooms")

    def __init__(self, max_scopes: int = 10_000) -> None:
        if max_scopes < 1:
            raise ValueError("max_scopes must be >= 1")
        self._max_scopes = max_scopes
        self._rooms: OrderedDict[Scope, _Room] = OrderedDict()

    def take(self, scope: Scope, tokens: int) -> bool:
        """Whether one request reserving ``tokens`` may start before its admission is decided; if so it
        is counted as pending until ``decided`` is called for it."""
        room = self._rooms.get(scope)
        if room is None:
            return False
        if room.requests - room.pending_requests < 1 or room.tokens - room.pending_tokens < tokens:
            return False
        room.pending_requests += 1
        room.pending_tokens += tokens
        self._rooms.move_to_end(scope)
        return True

    def decided(self, scope: Scope, tokens: int, *, speculative: bool, admitted: bool,
                requests_left: float, tokens_left: float) -> None:
        """The store answered for a request of ``scope`` (one ``take`` returned True for it when
        ``speculative``); ``*_left`` is the room its answer reported (``math.inf``: no such limit)."""
        room = self._rooms.get(scope)
        if speculative and room is not None:
            room.pending_requests = max(0, room.pending_requests - 1)
            room.pending_tokens = max(0, room.pending_tokens - tokens)
        if not admitted:
            self._rooms.pop(scope, None)
            return
        if room is None:
            room = self._rooms[scope] = _Room(requests_left, tokens_left)
            while len(self._rooms) > self._max_scopes:
                self._rooms.popitem(last=False)
            return
        room.requests, room.tokens = requests_left, tokens_left
        self._rooms.move_to_end(scope)

    def forget(self, scope: Scope) -> None:
        """No speculation for ``scope`` until the store's next admission (the store failed, say)."""
        self._rooms.pop(scope, None)

    def __len__(self) -> int:
        return len(self._rooms)
