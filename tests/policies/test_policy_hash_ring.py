"""The consistent hashing ring: spread, weights, stability when a backend leaves or joins."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import Candidate
from policies.hash_ring import HashRing, RingCache
from policies.prefix_hash import mix64

NAMES = [f"backend-{i}" for i in range(8)]
# Chi-square critical value for 7 degrees of freedom at p = 0.001.
CHI2_7DF_P001 = 24.32


def arc_shares(ring: HashRing) -> dict[str, float]:
    """Exact fraction of the 64-bit ring each member owns (first member of the walk after a point)."""
    points = ring._points
    shares = dict.fromkeys(ring.names, 0.0)
    previous = points[-1] - (1 << 64)
    for point in points:
        owner = ring.names[ring.walk(point - 1)[0]]
        shares[owner] += (point - previous) / (1 << 64)
        previous = point
    return shares


def random_positions(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [mix64(rng.getrandbits(32)) for _ in range(count)]


def test_every_walk_is_a_permutation_starting_at_the_owner() -> None:
    ring = HashRing([(name, 1.0) for name in NAMES], vnodes_per_weight=160)
    for position in random_positions(500, seed=1):
        walk = ring.walk(position)
        assert sorted(walk) == list(range(len(NAMES)))


def test_members_own_about_equal_arcs() -> None:
    ring = HashRing([(name, 1.0) for name in NAMES], vnodes_per_weight=160)
    shares = arc_shares(ring)
    assert sum(shares.values()) == pytest.approx(1.0)
    for share in shares.values():
        assert 0.7 / len(NAMES) < share < 1.3 / len(NAMES)


def test_random_keys_spread_as_the_arcs_say() -> None:
    """Key hashing is uniform: observed counts fit the arc shares (chi-square, p = 0.001)."""
    ring = HashRing([(name, 1.0) for name in NAMES], vnodes_per_weight=160)
    shares = arc_shares(ring)
    keys = 40_000
    counts = dict.fromkeys(NAMES, 0)
    for position in random_positions(keys, seed=2):
        counts[ring.names[ring.walk(position)[0]]] += 1
    chi2 = sum((counts[n] - keys * shares[n]) ** 2 / (keys * shares[n]) for n in NAMES)
    assert chi2 < CHI2_7DF_P001
    assert max(counts.values()) / min(counts.values()) < 1.6


def test_weights_scale_the_arcs() -> None:
    ring = HashRing([("heavy", 3.0), ("light-1", 1.0), ("light-2", 1.0)], vnodes_per_weight=160)
    shares = arc_shares(ring)
    assert shares["heavy"] == pytest.approx(0.6, abs=0.08)
    assert shares["light-1"] == pytest.approx(0.2, abs=0.05)


def test_zero_weight_members_own_nothing_but_come_last() -> None:
    ring = HashRing([("a", 1.0), ("b", 1.0), ("drained", 0.0)], vnodes_per_weight=50)
    drained = ring.names.index("drained")
    for position in random_positions(200, seed=3):
        assert ring.walk(position)[-1] == drained
    only_drained = HashRing([("x", 0.0), ("y", 0.0)], vnodes_per_weight=10)
    assert sorted(only_drained.walk(123)) == [0, 1], "all drained: treated as equal weights"


def test_removing_one_backend_moves_only_its_keys() -> None:
    full = HashRing([(name, 1.0) for name in NAMES], vnodes_per_weight=160)
    smaller = HashRing([(name, 1.0) for name in NAMES if name != "backend-3"], vnodes_per_weight=160)
    positions = random_positions(20_000, seed=4)
    before = [full.names[full.walk(p)[0]] for p in positions]
    after = [smaller.names[smaller.walk(p)[0]] for p in positions]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(b == "backend-3" for b, _ in moved)
    assert len(moved) / len(positions) < 1.6 / len(NAMES)
    # The removed backend's keys go to each one's next backend on the old ring.
    for position, (b, a) in zip(positions, zip(before, after, strict=True), strict=True):
        if b != a:
            assert full.names[full.walk(position)[1]] == a


def test_adding_a_backend_takes_keys_only_for_itself() -> None:
    small = HashRing([(name, 1.0) for name in NAMES[:7]], vnodes_per_weight=160)
    grown = HashRing([(name, 1.0) for name in NAMES], vnodes_per_weight=160)
    positions = random_positions(10_000, seed=5)
    moved = [
        grown.names[grown.walk(p)[0]]
        for p in positions
        if small.names[small.walk(p)[0]] != grown.names[grown.walk(p)[0]]
    ]
    assert set(moved) == {NAMES[7]}
    assert len(moved) / len(positions) < 1.6 / len(NAMES)


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.sampled_from([f"n{i}" for i in range(10)]), st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        min_size=1,
        max_size=10,
    ),
    position=st.integers(0, (1 << 64) - 1),
)
def test_ring_views_walk_every_candidate_once_even_with_duplicate_names(
    members: list[tuple[str, float]], position: int
) -> None:
    candidates = [Candidate(name, weight=weight) for name, weight in members]
    walk = RingCache(vnodes_per_weight=8).view(candidates).walk(position)
    assert sorted(walk) == list(range(len(candidates)))


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.sampled_from([f"n{i}" for i in range(10)]), st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        min_size=1,
        max_size=10,
        unique_by=lambda member: member[0],
    ),
    position=st.integers(0, (1 << 64) - 1),
)
def test_the_ring_order_does_not_depend_on_the_candidates_order(
    members: list[tuple[str, float]], position: int
) -> None:
    candidates = [Candidate(name, weight=weight) for name, weight in members]
    cache = RingCache(vnodes_per_weight=8)
    walk = [candidates[i].name for i in cache.view(candidates).walk(position)]
    reordered = list(reversed(candidates))
    assert [reordered[i].name for i in cache.view(reordered).walk(position)] == walk


def test_ring_cache_is_bounded() -> None:
    cache = RingCache(vnodes_per_weight=4, max_entries=3)
    for size in range(1, 12):
        cache.view([Candidate(f"n{i}") for i in range(size)])
    assert len(cache._rings) <= 3 and len(cache._views) <= 3


def test_a_ring_needs_members_and_vnodes() -> None:
    with pytest.raises(ValueError):
        HashRing([], vnodes_per_weight=4)
    with pytest.raises(ValueError):
        HashRing([("a", 1.0)], vnodes_per_weight=0)


def brute_force_walk(ring: HashRing, position: int) -> list[int]:
    """Distinct owners of the points met clockwise from ``position`` (each point's owner read back as the
    first member walking from just before it)."""
    points = ring._points
    owners = [ring.walk(point - 1)[0] for point in points]
    start = next((i for i, point in enumerate(points) if point > position), 0)
    walk: list[int] = []
    for step in range(len(points)):
        owner = owners[(start + step) % len(points)]
        if owner not in walk:
            walk.append(owner)
    return walk


@pytest.mark.parametrize("members", [5, 16, 40])
def test_walks_match_a_brute_force_walk(members: int) -> None:
    ring = HashRing([(f"node-{i}", 1.0) for i in range(members)], vnodes_per_weight=6)
    for position in random_positions(60, seed=members):
        walk = ring.walk(position)
        assert sorted(walk) == list(range(members))
        exact = min(members, HashRing.HEAD_DEPTH)
        assert list(walk[:exact]) == brute_force_walk(ring, position)[:exact]
