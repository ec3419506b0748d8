"""Prefix-affinity routing: send a request where its prompt prefix is most likely cached, within a load bound.

Decision, per request (``branch`` names what decided, for ``gateway_policy_decisions_total``):

- ``key``: a client routing key (session id, user) is given: consistent hashing with bounded loads on it.
- ``cold``: no backend holds the prompt's first block: consistent hashing with bounded loads on the hash of
  the first ``key_blocks`` blocks (the whole prompt when shorter), so every replica agrees, no shared state.
- ``hit``: among backends within the load bound, the lowest ``w_miss * uncached_blocks + w_load * load``
  wins and it holds the longest match.
- ``spill``: the winner holds a shorter match than the best (the best was over the bound, or its load
  outweighed its advantage); the winner gets the prefix too, so a hot prefix spreads instead of melting
  one backend.
- ``fallback``: every backend is over the bound: least loaded first.

A hot prefix is shed first (``arrival_share.py``): a backend busier than the fleet's mean, past
``bound_min_load``, is not eligible for a prefix that brought at least ``hot_share`` of its last
``hot_window`` arrivals, so that prefix spreads (as ``spill``) before the backend's smaller tenants are
pushed over the bound and off their cache.

Ties break by ring order of the cold key, so replicas with the same view decide alike. The ranking is also
the failover order. ``record`` speculatively inserts the request's blocks into the serving backend's index
(call it with the same context object given to ``rank``: the prompt's hashes are reused, not recomputed).
Load is ``in_flight + queue_depth`` per unit of weight; "over the bound" is bounded loads' test
(``load_bound.py``), which a backend never fails while its load with the request is at most
``bound_min_load`` (8 by default: measured on the affinity benchmark, spilling at a handful of requests
in flight cost TTFT p90 without buying balance that mattered). The index (``prefix_index.py``) is
bounded by each backend's cache size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.arrival_share import ArrivalShare
from policies.base import Candidate, Ranking, RoutingContext
from policies.hash_ring import DEFAULT_VNODES_PER_WEIGHT, RingCache, RingView
from policies.load_bound import DEFAULT_LOAD_FACTOR, finite_loads
from policies.prefix_hash import DEFAULT_BLOCK_CHARS, PrefixHasher
from policies.prefix_index import (
    DEFAULT_CACHE_TOKENS,
    DEFAULT_CHARS_PER_TOKEN,
    DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_BLOCKS_PER_BACKEND,
    PrefixIndex,
)

HIT, COLD, SPILL, KEY, FALLBACK = "hit", "cold", "spill", "key", "fallback"
_MEMO_SIZE = 64


@dataclass(frozen=True, slots=True)
class PrefixAffinityConfig:
    """Options of ``prefix_affinity`` (all replicas of a model must use the same values)."""

    # Characters of canonical prompt per hashed block (about 64 tokens by default).
    block_chars: int = DEFAULT_BLOCK_CHARS
    # Cold prompts are placed on the ring by the hash of their first ``key_blocks`` blocks; raise it when
    # many tenants share a long common preamble.
    key_blocks: int = 1
    # Bounded loads' c: a backend may hold at most ceil(c * mean) requests (with the new one counted).
    load_factor: float = DEFAULT_LOAD_FACTOR
    # A backend whose load, the new request counted, is at most this is never over the bound: at a few
    # requests in flight the bound's ceil(c * mean) is a request or two, and spilling a hot prefix to a
    # cold engine costs a whole prefill for no queueing saved (cf. SGLang's balance_abs_threshold).
    # 0: the bound applies at every load.
    bound_min_load: float = 8.0
    # cost = w_miss * uncached blocks + w_load * load: by default one request of load is worth two
    # blocks (~128 tokens) of prefill.
    w_miss: float = 1.0
    w_load: float = 2.0
    # Hot-prefix shedding (see the module docstring): the share of a backend's last ``hot_window``
    # arrivals from which a prefix is shed while that backend is above the mean load. 0 turns it off.
    hot_share: float = 0.5
    hot_window: int = 32
    # Ring points per unit of backend weight.
    vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT
    # Index sizing: engine cache tokens -> characters -> blocks; the default when a backend reports no
    # geometry; hard caps on one backend's blocks and on the number of backends remembered.
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    default_cache_tokens: int = DEFAULT_CACHE_TOKENS
    max_blocks_per_backend: int = DEFAULT_MAX_BLOCKS_PER_BACKEND
    max_backends: int = DEFAULT_MAX_BACKENDS

    def __post_init__(self) -> None:
        if self.block_chars < 1:
            raise ValueError(f"block_chars must be >= 1, got {self.block_chars}")
        if self.key_blocks < 1:
            raise ValueError(f"key_blocks must be >= 1, got {self.key_blocks}")
        if self.load_factor < 1.0:
            raise ValueError(f"load_factor must be >= 1.0, got {self.load_factor}")
        if self.bound_min_load < 0:
            raise ValueError(f"bound_min_load must be >= 0, got {self.bound_min_load}")
        if self.w_miss < 0 or self.w_load < 0:
            raise ValueError("w_miss and w_load must be >= 0")
        if not 0.0 <= self.hot_share <= 1.0:
            raise ValueError(f"hot_share must be within [0, 1], got {self.hot_share}")
        if self.hot_window < 1:
            raise ValueError(f"hot_window must be >= 1, got {self.hot_window}")
        if self.vnodes_per_weight < 1:
            raise ValueError(f"vnodes_per_weight must be >= 1, got {self.vnodes_per_weight}")
        if self.chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be > 0, got {self.chars_per_token}")
        if self.default_cache_tokens < 0:
            raise ValueError(f"default_cache_tokens must be >= 0, got {self.default_cache_tokens}")
        if self.max_blocks_per_backend < 1 or self.max_backends < 1:
            raise ValueError("max_blocks_per_backend and max_backends must be >= 1")


class PrefixAffinity:
    """The ``prefix_affinity`` policy. State: the affinity index and cached hash rings, nothing shared."""

    def __init__(self, config: PrefixAffinityConfig | None = None) -> None:
        self.config = config or PrefixAffinityConfig()
        cfg = self.config
        self.hasher = PrefixHasher(cfg.block_chars)
        self.index = PrefixIndex(
            cfg.block_chars,
            chars_per_token=cfg.chars_per_token,
            default_cache_tokens=cfg.default_cache_tokens,
            max_blocks_per_backend=cfg.max_blocks_per_backend,
            max_backends=cfg.max_backends,
        )
        self._rings = RingCache(cfg.vnodes_per_weight, cfg.load_factor)
        self.arrivals = ArrivalShare(cfg.hot_window, cfg.max_backends)
        # rank() hashes the prompt; record() for the same context object reuses the hashes and finds the
        # served backend's cache geometry among the candidates rank() saw. Keyed by identity: hashing an
        # 8 KB prompt string as a dict key would cost as much as a third of the decision.
        self._memo: dict[int, tuple[RoutingContext, list[int], Sequence[Candidate]]] = {}

    def block_hashes(self, context: RoutingContext) -> list[int]:
        """The chained block hashes of the context's prompt."""
        entry = self._memo.get(id(context))
        if entry is not None and entry[0] is context:
            return entry[1]
        return self.hasher.block_hashes(context.model, context.prompt)

    def _remember(self, context: RoutingContext, candidates: Sequence[Candidate]) -> list[int]:
        memo = self._memo
        entry = memo.get(id(context))
        if entry is not None and entry[0] is context:
            hashes = entry[1]
            if entry[2] is not candidates:
                memo[id(context)] = (context, hashes, candidates)
            return hashes
        hashes = self.hasher.block_hashes(context.model, context.prompt)
        if len(memo) >= _MEMO_SIZE:
            del memo[next(iter(memo))]
        memo[id(context)] = (context, hashes, candidates)
        return hashes

    def rank(self, candidates: Sequence[Candidate], context: RoutingContext) -> Ranking:
        if not candidates:
            return Ranking(order=[], branch=FALLBACK)
        cfg = self.config
        hashes = self._remember(context, candidates)
        view = self._rings.view(candidates)
        loads = finite_loads([c.in_flight + c.queue_depth for c in candidates])
        eligible = view.bound.eligible(loads)
        if cfg.bound_min_load > 0:
            floor = cfg.bound_min_load - 1
            eligible = [ok or load <= floor for ok, load in zip(eligible, loads, strict=True)]
        matches = self.index.matches(candidates, hashes)
        if context.routing_key:
            position = self.hasher.routing_key(context.model, context.routing_key)
            return _ring_ranking(candidates, view, position, eligible, loads, matches, KEY)
        position = self.hasher.prefix_key(context.model, context.prompt, hashes, cfg.key_blocks)
        best = max(matches)
        if best == 0:
            return _ring_ranking(candidates, view, position, eligible, loads, matches, COLD)
        w_miss, w_load = cfg.w_miss, cfg.w_load
        normalized = view.bound.normalized(loads)
        if cfg.hot_share > 0:
            eligible = self._shed_hot(candidates, hashes, loads, normalized, eligible)
        # w_miss * (blocks - match) + w_load * load, less the constant w_miss * blocks.
        costs = [w_load * load - w_miss * match for match, load in zip(matches, normalized, strict=True)]
        ring_order = view.walk(position)
        # Stable sorts of the ring order: equal costs keep ring order, as every replica would.
        order = sorted([i for i in ring_order if eligible[i]], key=costs.__getitem__)
        if not order:
            return _fallback(candidates, ring_order, normalized, matches)
        if len(order) < len(ring_order):
            order.extend(sorted([i for i in ring_order if not eligible[i]], key=costs.__getitem__))
        chosen = order[0]
        branch = HIT if matches[chosen] == best else SPILL
        return Ranking([candidates[i] for i in order], branch, matches[chosen])

    def _key_block(self, hashes: Sequence[int]) -> int:
        """The block that names the prompt's prefix (tenant): the last of the first ``key_blocks``."""
        return hashes[min(self.config.key_blocks, len(hashes)) - 1]

    def _shed_hot(self, candidates: Sequence[Candidate], hashes: Sequence[int], loads: list[float],
                  normalized: list[float], eligible: list[bool]) -> list[bool]:
        """``eligible`` less the busier-than-mean backends this prefix dominates (unless none is left)."""
        mean = sum(normalized) / len(normalized)
        floor = self.config.bound_min_load
        key = self._key_block(hashes)
        threshold = self.config.hot_share
        shed = [
            ok and normalized[i] > mean and loads[i] + 1 > floor
            and self.arrivals.share(candidates[i].name, key) >= threshold
            for i, ok in enumerate(eligible)
        ]
        if not any(shed):
            return eligible
        kept = [ok and not out for ok, out in zip(eligible, shed, strict=True)]
        return kept if any(kept) else eligible

    def record(self, backend: str, context: RoutingContext) -> None:
        """Speculatively insert the request's blocks into ``backend``'s index.

        Pass the context object given to ``rank``: its hashes and candidates are remembered.
        """
        entry = self._memo.get(id(context))
        if entry is not None and entry[0] is context:
            hashes, seen = entry[1], entry[2]
        else:
            hashes, seen = self.hasher.block_hashes(context.model, context.prompt), ()
        if not hashes:
            return
        self.arrivals.add(backend, self._key_block(hashes))
        for candidate in seen:
            if candidate.name == backend:
                self.index.insert(backend, hashes, candidate.cache_blocks, candidate.block_size)
                return
        self.index.insert(backend, hashes)

    def forget(self, backend: str) -> None:
        self.index.forget(backend)
        self.arrivals.forget(backend)


def _ring_ranking(
    candidates: Sequence[Candidate],
    view: RingView,
    position: int,
    eligible: list[bool],
    loads: list[float],
    matches: list[int],
    branch: str,
) -> Ranking:
    """Walk the ring, skipping backends over the bound; skipped ones follow, still in ring order."""
    ring_order = view.walk(position)
    order = [i for i in ring_order if eligible[i]]
    if not order:
        return _fallback(candidates, ring_order, view.bound.normalized(loads), matches)
    if len(order) < len(ring_order):
        order.extend([i for i in ring_order if not eligible[i]])
    return Ranking([candidates[i] for i in order], branch, matches[order[0]])


def _fallback(
    candidates: Sequence[Candidate], ring_order: Sequence[int], normalized: list[float], matches: list[int]
) -> Ranking:
    """Every backend is over the bound: least loaded first, ties in ring order."""
    order = sorted(ring_order, key=normalized.__getitem__)
    return Ranking([candidates[i] for i in order], FALLBACK, matches[order[0]])
