"""least_loaded: power of two choices on in-flight + queue depth, deterministic sampling."""

from __future__ import annotations

from collections import Counter

import pytest

from policies.base import Candidate, RoutingContext
from policies.least_loaded import LeastLoaded, LeastLoadedConfig

CONTEXT = RoutingContext(model="m", prompt="hello")
# Chi-square critical value for 7 degrees of freedom at p = 0.001.
CHI2_7DF_P001 = 24.32


def test_of_two_it_always_picks_the_less_loaded() -> None:
    policy = LeastLoaded()
    for _ in range(50):
        ranking = policy.rank([Candidate("busy", in_flight=5), Candidate("idle", in_flight=1)], CONTEXT)
        assert [c.name for c in ranking.order] == ["idle", "busy"]
        assert ranking.branch == "least_loaded"
        ranking = policy.rank(
            [Candidate("queued", queue_depth=7.0), Candidate("running", in_flight=3)], CONTEXT
        )
        assert ranking.order[0].name == "running", "scraped queue depth counts as load"


def test_the_winner_is_the_less_loaded_of_its_sample_and_the_rest_follow_by_load() -> None:
    policy = LeastLoaded()
    candidates = [Candidate(f"b{i}", in_flight=i) for i in range(8)]
    winners = Counter()
    for _ in range(2000):
        order = policy.rank(candidates, CONTEXT).order
        winners[order[0].name] += 1
        rest = [c.in_flight for c in order[1:]]
        assert rest == sorted(rest)
    assert winners["b7"] == 0, "the most loaded never wins a sample of two"
    assert winners["b0"] > winners["b3"] > winners["b6"]
    # P(b0 wins) = P(b0 sampled) = 2/8.
    assert winners["b0"] == pytest.approx(500, abs=90)


def test_weights_scale_load() -> None:
    policy = LeastLoaded(LeastLoadedConfig(choices=2))
    big = Candidate("big", weight=4.0, in_flight=6)
    small = Candidate("small", weight=1.0, in_flight=2)
    assert policy.rank([big, small], CONTEXT).order[0].name == "big"


def test_idle_fleet_spreads_uniformly() -> None:
    policy = LeastLoaded()
    candidates = [Candidate(f"b{i}") for i in range(8)]
    rounds = 16_000
    counts = Counter(policy.rank(candidates, CONTEXT).order[0].name for _ in range(rounds))
    expected = rounds / 8
    chi2 = sum((counts[c.name] - expected) ** 2 / expected for c in candidates)
    assert chi2 < CHI2_7DF_P001


def test_same_seed_and_history_give_the_same_choices() -> None:
    candidates = [Candidate(f"b{i}", in_flight=i % 3) for i in range(6)]
    first, second = LeastLoaded(LeastLoadedConfig(seed=3)), LeastLoaded(LeastLoadedConfig(seed=3))
    assert [first.rank(candidates, CONTEXT) for _ in range(100)] == [
        second.rank(candidates, CONTEXT) for _ in range(100)
    ]
    other = LeastLoaded(LeastLoadedConfig(seed=4))
    assert [other.rank(candidates, CONTEXT).order[0] for _ in range(100)] != [
        LeastLoaded(LeastLoadedConfig(seed=3)).rank(candidates, CONTEXT).order[0] for _ in range(100)
    ]


def test_choices_equal_to_the_fleet_is_a_full_scan() -> None:
    policy = LeastLoaded(LeastLoadedConfig(choices=16))
    candidates = [Candidate(f"b{i}", in_flight=(i * 7) % 10) for i in range(10)]
    for _ in range(20):
        assert policy.rank(candidates, CONTEXT).order[0].in_flight == 0


def test_single_and_empty_fleets() -> None:
    policy = LeastLoaded()
    assert policy.rank([], CONTEXT).order == []
    assert policy.rank([Candidate("only")], CONTEXT).order[0].name == "only"
    with pytest.raises(ValueError, match="choices"):
        LeastLoadedConfig(choices=0)
