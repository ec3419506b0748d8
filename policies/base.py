"""The routing policy interface: candidates in, an ordered ranking (also the failover order) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Candidate:
    """A healthy backend that serves the requested model, as the router sees it right now."""

    name: str
    weight: float = 1.0
    in_flight: int = 0
    queue_depth: float = 0.0
    # KV cache geometry, when known, to size a prefix index like the engine's real cache.
    cache_blocks: int | None = None
    block_size: int | None = None

    @property
    def load(self) -> float:
        return self.in_flight + self.queue_depth


@dataclass(frozen=True, slots=True)
class RoutingContext:
    model: str
    # Canonical prompt text (completions: the prompt; chat: a deterministic role+content serialization).
    prompt: str = ""
    routing_key: str | None = None


@dataclass(frozen=True, slots=True)
class Ranking:
    order: list[Candidate]
    # Which branch decided: hit, cold, spill, key, fallback, round_robin, least_loaded.
    branch: str
    predicted_hit_blocks: int = 0


class RoutingPolicy(Protocol):
    def rank(self, candidates: Sequence[Candidate], context: RoutingContext) -> Ranking:
        """Order ``candidates`` best first. Never empty for non-empty candidates."""
        ...

    def record(self, backend: str, context: RoutingContext) -> None:
        """The request was actually served by ``backend`` (after any failover)."""
        ...

    def forget(self, backend: str) -> None:
        """``backend`` left the fleet: drop whatever state the policy kept for it."""
        ...
