"""Consistent hashing ring with weighted virtual nodes, and a bounded cache of rings per fleet.

A key's walk order (distinct backends met going clockwise from the key's position) is precomputed per
ring point, so a lookup is one bisect and a dict hit. Rings depend only on the backends' names and
weights, so every gateway replica builds the same ring and sends the same key to the same backend.
Removing one of N backends moves only the keys it owned (about 1/N of them) to their next backend.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from hashlib import blake2b
from operator import attrgetter
from typing import TypeVar

from policies.base import Candidate
from policies.load_bound import DEFAULT_LOAD_FACTOR, LoadBound

DEFAULT_VNODES_PER_WEIGHT = 160
_NAME = attrgetter("name")
_WEIGHT = attrgetter("weight")
_K = TypeVar("_K")
_V = TypeVar("_V")
_PERSON_RING = b"llmgw-ring"
_MAX_WALKS = 4096


class HashRing:
    """One ring over a set of (name, weight) members; members are identified by their index in ``names``.

    Each member gets ``round(weight * vnodes_per_weight)`` points (at least one when weight > 0). Members
    with weight <= 0 own no arc; they come last in every walk, so they still serve as a last failover.
    Per point, the first ``HEAD_DEPTH`` distinct members of the walk are precomputed; in a larger fleet the
    walk continues with the remaining members in name order (only failover past 16 backends sees it), which
    keeps building a ring O(points x 16) and its memory bounded.
    """

    HEAD_DEPTH = 16

    __slots__ = ("_heads", "_points", "_tail_order", "_walks", "names")

    def __init__(self, members: Sequence[tuple[str, float]], vnodes_per_weight: int) -> None:
        if vnodes_per_weight < 1:
            raise ValueError(f"vnodes_per_weight must be >= 1, got {vnodes_per_weight}")
        weights: dict[str, float] = {}
        for name, weight in members:
            weights.setdefault(name, weight)
        if not weights:
            raise ValueError("a hash ring needs at least one member")
        self.names: tuple[str, ...] = tuple(sorted(weights))
        if all(weights[name] <= 0 for name in self.names):
            weights = dict.fromkeys(self.names, 1.0)
        marks: list[tuple[int, int]] = []
        for index, name in enumerate(self.names):
            weight = weights[name]
            count = max(1, round(weight * vnodes_per_weight)) if weight > 0 else 0
            for replica in range(count):
                digest = blake2b(f"{name}\x00{replica}".encode(), digest_size=8, person=_PERSON_RING).digest()
                marks.append((int.from_bytes(digest, "little"), index))
        marks.sort()
        self._points = [position for position, _ in marks]
        live = tuple(i for i, name in enumerate(self.names) if weights[name] > 0)
        drained = tuple(i for i, name in enumerate(self.names) if weights[name] <= 0)
        self._tail_order = live + drained
        self._heads = _walk_heads([index for _, index in marks], min(len(live), self.HEAD_DEPTH))
        # Complete walks by head identity (the heads live as long as the ring); bounded.
        self._walks: dict[int, tuple[int, ...]] = {}

    def head(self, position: int) -> tuple[int, ...]:
        """The first distinct members met walking clockwise from ``position`` (an interned tuple)."""
        return self._heads[bisect_right(self._points, position) % len(self._points)]

    def complete(self, head: tuple[int, ...]) -> tuple[int, ...]:
        """The whole walk that starts with ``head``: every member exactly once."""
        walk = self._walks.get(id(head))
        if walk is None:
            walk = head + tuple(member for member in self._tail_order if member not in head)
            if len(self._walks) >= _MAX_WALKS:
                self._walks.clear()
            self._walks[id(head)] = walk
        return walk

    def walk(self, position: int) -> tuple[int, ...]:
        """Member indexes in ring order from ``position``: every member exactly once."""
        return self.complete(self.head(position))


def _walk_heads(owners: list[int], depth: int) -> list[tuple[int, ...]]:
    """For each point, the first ``depth`` distinct owners met walking clockwise from it."""
    count = len(owners)
    seen: list[int] = []
    step = count - 1
    while len(seen) < depth:  # explicit walk from the last point, wrapping around
        owner = owners[step % count]
        if owner not in seen:
            seen.append(owner)
        step += 1
    heads: list[tuple[int, ...]] = [()] * count
    following = tuple(seen)
    heads[count - 1] = following
    interned: dict[tuple[int, ...], tuple[int, ...]] = {following: following}
    # Walking from point p meets owner(p), then what walking from p + 1 meets, less owner(p).
    for point in range(count - 2, -1, -1):
        owner = owners[point]
        if following[0] != owner:
            if owner in following:
                following = (owner, *(o for o in following if o != owner))
            else:
                following = (owner, *following[: depth - 1])
            following = interned.setdefault(following, following)
        heads[point] = following
    return heads


class RingCache:
    """Rings for the fleets seen recently, plus how each candidate list maps onto its ring.

    The fleet changes rarely (health, config reload), so a ring is built once per membership and reused;
    both caches are bounded so a flapping fleet cannot grow them.
    """

    __slots__ = ("_load_factor", "_max_entries", "_rings", "_views", "_vnodes")

    def __init__(
        self,
        vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        max_entries: int = 16,
    ) -> None:
        if vnodes_per_weight < 1:
            raise ValueError(f"vnodes_per_weight must be >= 1, got {vnodes_per_weight}")
        self._vnodes = vnodes_per_weight
        self._load_factor = load_factor
        self._max_entries = max_entries
        self._rings: dict[frozenset[tuple[str, float]], HashRing] = {}
        self._views: dict[tuple[tuple[str, ...], tuple[float, ...]], RingView] = {}

    def view(self, candidates: Sequence[Candidate]) -> RingView:
        """The ring (and load bound) for these candidates, walking in candidate indexes."""
        key = (tuple(map(_NAME, candidates)), tuple(map(_WEIGHT, candidates)))
        view = self._views.get(key)
        if view is None:
            members = tuple(zip(*key, strict=True))
            first: dict[str, int] = {}
            for index, (name, _) in enumerate(members):
                first.setdefault(name, index)
            ring_key = frozenset((name, members[index][1]) for name, index in first.items())
            ring = self._rings.get(ring_key)
            if ring is None:
                ring = HashRing([members[index] for index in first.values()], self._vnodes)
                _put_bounded(self._rings, ring_key, ring, self._max_entries)
            duplicates = tuple(i for i in range(len(members)) if first[members[i][0]] != i)
            bound = LoadBound([weight for _, weight in members], self._load_factor)
            view = RingView(ring, [first[name] for name in ring.names], duplicates, bound)
            _put_bounded(self._views, key, view, self._max_entries)
        return view


class RingView:
    """A ring seen through one candidate list: walks yield indexes into that list, each exactly once.

    Also carries the fleet's ``LoadBound``: both depend only on the candidates' names and weights.
    """

    __slots__ = ("_duplicates", "_slots", "_walks", "bound", "ring")

    def __init__(
        self, ring: HashRing, slots: list[int], duplicates: tuple[int, ...], bound: LoadBound
    ) -> None:
        self.ring = ring
        self.bound = bound
        self._slots = slots
        self._duplicates = duplicates
        # Walks translated to candidate indexes, keyed by the identity of the ring's interned head (which
        # the ring keeps alive); bounded.
        self._walks: dict[int, tuple[int, ...]] = {}

    def walk(self, position: int) -> tuple[int, ...]:
        ring = self.ring
        head = ring.head(position)
        order = self._walks.get(id(head))
        if order is None:
            slots = self._slots
            order = (*(slots[member] for member in ring.complete(head)), *self._duplicates)
            if len(self._walks) >= _MAX_WALKS:
                self._walks.clear()
            self._walks[id(head)] = order
        return order


def _put_bounded(cache: dict[_K, _V], key: _K, value: _V, max_entries: int) -> None:
    if len(cache) >= max_entries:
        del cache[next(iter(cache))]
    cache[key] = value
