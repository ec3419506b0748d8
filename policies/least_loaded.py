"""Least loaded by the power of d choices (d = 2 by default): sample d backends, take the least loaded.

Load is ``in_flight + queue_depth`` per unit of weight. Sampling d instead of scanning all avoids the herd
that a lagging scraped queue depth causes when every replica sends to the same momentary minimum.

Randomness is deterministic: the sample for the k-th decision comes from splitmix64(seed, k), a per-policy
counter. The same seed, candidates and decision count give the same choice (tests replay it), replicas
given different seeds sample independently, and identical prompts are not pinned to one pair of
backends (which seeding from the prompt's hash would do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.base import Candidate, Ranking, RoutingContext
from policies.load_bound import normalized_load
from policies.prefix_hash import mix64

LEAST_LOADED = "least_loaded"
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class LeastLoadedConfig:
    """Options of ``least_loaded``."""

    choices: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.choices < 1:
            raise ValueError(f"choices must be >= 1, got {self.choices}")


class LeastLoaded:
    """The ``least_loaded`` policy: winner of d sampled candidates first, the rest by load."""

    def __init__(self, config: LeastLoadedConfig | None = None) -> None:
        self.config = config or LeastLoadedConfig()
        self._decisions = 0

    def rank(self, candidates: Sequence[Candidate], context: RoutingContext) -> Ranking:
        count = len(candidates)
        if count == 0:
            return Ranking(order=[], branch=LEAST_LOADED)
        self._decisions += 1
        loads = [normalized_load(c.load, c.weight) for c in candidates]
        by_load = sorted(range(count), key=loads.__getitem__)
        sampled = self._sample(count, min(self.config.choices, count))
        winner = min(sampled, key=loads.__getitem__)  # ties: the first sampled
        order = [winner, *(i for i in by_load if i != winner)]
        return Ranking([candidates[i] for i in order], LEAST_LOADED)

    def _sample(self, count: int, choices: int) -> list[int]:
        """``choices`` distinct indexes in [0, count), from the decision counter (partial Fisher-Yates)."""
        state = mix64((self.config.seed * 0x100000001B3 + self._decisions) & _MASK64)
        pool = list(range(count))
        for position in range(choices):
            state = mix64(state)
            pick = position + state % (count - position)
            pool[position], pool[pick] = pool[pick], pool[position]
        return pool[:choices]

    def record(self, backend: str, context: RoutingContext) -> None:
        return None

    def forget(self, backend: str) -> None:
        return None
