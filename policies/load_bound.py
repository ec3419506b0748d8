"""Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018).

With the incoming request counted, the fleet will hold ``total + 1`` requests; a backend of weight ``w``
may hold at most ``ceil(c * (total + 1) * w / sum(w))`` of them, so it is eligible only while its load plus
the new request stays within that. With ``c >= 1`` some backend is always eligible when loads are whole
numbers; scraped queue depths can be fractional, and the caller falls back to least loaded when none is.
A backend of weight <= 0 (draining) is never eligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil, isfinite

DEFAULT_LOAD_FACTOR = 1.25
# Keeps c * (total + 1) / n from rounding up a whole number that floating point made a hair too big.
_EPSILON = 1e-9
UNKNOWN_LOAD = 1e12


class LoadBound:
    """The bound for one fleet's weights, applied to each request's loads."""

    __slots__ = ("_count", "_load_factor", "_shares", "_uniform", "_weights")

    def __init__(self, weights: Sequence[float], load_factor: float) -> None:
        if load_factor < 1.0:
            raise ValueError(f"load_factor must be >= 1.0, got {load_factor}")
        effective = [weight if weight > 0 else 0.0 for weight in weights]
        total = sum(effective)
        if total <= 0:
            effective = [1.0] * len(weights)
            total = float(len(weights))
        self._count = len(weights)
        self._load_factor = load_factor
        self._weights = effective
        self._shares = [weight / total for weight in effective]
        self._uniform = len(set(effective)) <= 1

    def eligible(self, loads: Sequence[float]) -> list[bool]:
        """For each backend, whether it may take one more request under the bound."""
        requests = self._load_factor * (sum(loads) + 1)
        if self._uniform:
            limit = ceil(requests / self._count - _EPSILON) - 1
            return [load <= limit for load in loads]
        return [
            load + 1 <= ceil(requests * share - _EPSILON) if share > 0 else False
            for load, share in zip(loads, self._shares, strict=True)
        ]

    def normalized(self, loads: Sequence[float]) -> list[float]:
        """Load per unit of weight (a draining backend looks infinitely loaded)."""
        if self._uniform:
            scale = self._weights[0] if self._weights else 1.0
            return list(loads) if scale == 1.0 else [load / scale for load in loads]
        return [
            load / weight if weight > 0 else float("inf")
            for load, weight in zip(loads, self._weights, strict=True)
        ]


def finite_loads(loads: list[float]) -> list[float]:
    """``loads`` with NaN or infinity (a broken scrape) replaced by a huge finite load: such a backend
    counts as full, and the bound's arithmetic stays defined."""
    if isfinite(sum(loads)):
        return loads
    return [load if isfinite(load) else UNKNOWN_LOAD for load in loads]


def normalized_load(load: float, weight: float) -> float:
    """Load per unit of weight; a drained (weight <= 0) or unreadable backend looks infinitely loaded."""
    return load / weight if weight > 0 and isfinite(load) else float("inf")
