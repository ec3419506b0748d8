"""Weighted round robin (smooth weighted round robin, as nginx does it).

Over any run of ``sum(weights)`` decisions with integer weights and a stable fleet, each backend is chosen
exactly ``weight`` times, interleaved rather than in bursts. A backend of weight <= 0 is never chosen
while another one can be. The failover order after the chosen backend is the candidates' own order.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Candidate, Ranking, RoutingContext

ROUND_ROBIN = "round_robin"


class RoundRobin:
    """The ``round_robin`` policy. State: each backend's current smooth-WRR credit."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def rank(self, candidates: Sequence[Candidate], context: RoutingContext) -> Ranking:
        if not candidates:
            return Ranking(order=[], branch=ROUND_ROBIN)
        total = 0.0
        best: Candidate | None = None
        best_current = 0.0
        for candidate in candidates:
            weight = max(candidate.weight, 0.0)
            current = self._current.get(candidate.name, 0.0) + weight
            self._current[candidate.name] = current
            total += weight
            if best is None or current > best_current:
                best, best_current = candidate, current
        assert best is not None
        self._current[best.name] -= total
        rest = [c for c in candidates if c is not best]
        return Ranking(order=[best, *rest], branch=ROUND_ROBIN)

    def record(self, backend: str, context: RoutingContext) -> None:
        return None

    def forget(self, backend: str) -> None:
        self._current.pop(backend, None)
