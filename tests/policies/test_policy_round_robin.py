"""round_robin: smooth weighted round robin honours weights exactly over a cycle."""

from __future__ import annotations

from collections import Counter

from policies.base import Candidate, RoutingContext
from policies.round_robin import RoundRobin

CONTEXT = RoutingContext(model="m")


def test_weights_are_honoured_exactly_over_each_cycle() -> None:
    policy = RoundRobin()
    candidates = [Candidate("a", weight=5), Candidate("b", weight=1), Candidate("c", weight=2)]
    for _ in range(3):
        cycle = Counter(policy.rank(candidates, CONTEXT).order[0].name for _ in range(8))
        assert cycle == {"a": 5, "b": 1, "c": 2}


def test_picks_are_interleaved_not_bursts() -> None:
    policy = RoundRobin()
    candidates = [Candidate("a", weight=2), Candidate("b", weight=2)]
    picks = [policy.rank(candidates, CONTEXT).order[0].name for _ in range(8)]
    assert picks == ["a", "b"] * 4


def test_drained_backends_are_not_picked_but_stay_in_the_failover_order() -> None:
    policy = RoundRobin()
    candidates = [Candidate("drained", weight=0), Candidate("live", weight=1)]
    for _ in range(5):
        ranking = policy.rank(candidates, CONTEXT)
        assert [c.name for c in ranking.order] == ["live", "drained"]
        assert ranking.branch == "round_robin"


def test_forget_drops_a_backends_state() -> None:
    policy = RoundRobin()
    candidates = [Candidate("a", weight=1), Candidate("b", weight=1)]
    policy.rank(candidates, CONTEXT)
    policy.forget("a")
    policy.forget("b")
    policy.forget("unknown")
    assert policy._current == {}, "no state kept for backends that left"
    assert policy.rank([], CONTEXT).order == []
