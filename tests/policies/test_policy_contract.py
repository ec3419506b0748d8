"""The contract every policy keeps, checked over all of them with generated fleets and requests.

- the ranking is a permutation of the candidates (never empty for non-empty candidates),
- the branch is one of the declared ``DECISION_BRANCHES``,
- the same inputs and state give the same ranking (two instances fed the same stream agree).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import Candidate, Ranking, RoutingContext, RoutingPolicy
from policies.registry import DECISION_BRANCHES, POLICY_NAMES, build_policy

SMALL_BLOCKS = {"prefix_affinity": {"block_chars": 8, "default_cache_tokens": 64, "vnodes_per_weight": 16}}

candidates_strategy = st.lists(
    st.builds(
        Candidate,
        name=st.sampled_from([f"b{i}" for i in range(10)]),
        weight=st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0]),
        in_flight=st.integers(0, 40),
        queue_depth=st.one_of(st.just(0.0), st.floats(0, 30, allow_nan=False)),
        cache_blocks=st.one_of(st.none(), st.integers(0, 5000)),
        block_size=st.one_of(st.none(), st.sampled_from([0, 16, 32])),
    ),
    min_size=1,
    max_size=10,
)
prompt_strategy = st.one_of(
    st.text(max_size=120),
    st.builds(
        lambda tenant, suffix: f"shared system prompt of tenant {tenant}. " + suffix,
        st.integers(0, 3),
        st.text(max_size=40),
    ),
)
context_strategy = st.builds(
    RoutingContext,
    model=st.sampled_from(["m1", "m2"]),
    prompt=prompt_strategy,
    routing_key=st.one_of(st.none(), st.none(), st.text(min_size=1, max_size=12)),
)
steps_strategy = st.lists(st.tuples(candidates_strategy, context_strategy), min_size=1, max_size=25)


def new(name: str) -> RoutingPolicy:
    return build_policy(name, SMALL_BLOCKS.get(name, {}))


def assert_valid(ranking: Ranking, candidates: list[Candidate]) -> None:
    assert ranking.order, "never empty for non-empty candidates"
    assert Counter(map(id, ranking.order)) == Counter(map(id, candidates)), "a permutation of the candidates"
    assert ranking.branch in DECISION_BRANCHES
    assert ranking.predicted_hit_blocks >= 0


@pytest.mark.parametrize("name", POLICY_NAMES)
@settings(max_examples=40, deadline=None)
@given(steps=steps_strategy)
def test_rankings_are_permutations_and_deterministic(
    name: str, steps: list[tuple[list[Candidate], RoutingContext]]
) -> None:
    first, second = new(name), new(name)
    for candidates, context in steps:
        ranking = first.rank(candidates, context)
        assert_valid(ranking, candidates)
        assert second.rank(candidates, context) == ranking, "same inputs and state, same ranking"
        served = ranking.order[-1 if len(context.prompt) % 3 == 0 else 0].name
        first.record(served, context)
        second.record(served, context)
    for candidates, _ in steps[:3]:
        for candidate in candidates:
            first.forget(candidate.name)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_empty_candidates_rank_empty(name: str) -> None:
    assert new(name).rank([], RoutingContext(model="m", prompt="x")).order == []


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_broken_scraped_loads_do_not_break_the_ranking(name: str) -> None:
    policy = new(name)
    candidates = [
        Candidate("nan", queue_depth=float("nan")),
        Candidate("inf", queue_depth=float("inf")),
        Candidate("ok", in_flight=2),
    ]
    for prompt in ("", "a prompt long enough for blocks", "another one"):
        context = RoutingContext(model="m", prompt=prompt)
        ranking = policy.rank(candidates, context)
        assert_valid(ranking, candidates)
        policy.record(ranking.order[0].name, context)
    order = [c.name for c in policy.rank(candidates, RoutingContext(model="m", prompt="z")).order]
    if name == "prefix_affinity":
        assert order[0] == "ok", "an unreadable load counts as full"
    if name == "least_loaded":
        assert order.index("ok") <= 1, "first, or right after a sampled winner"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_a_single_candidate_is_always_first(name: str) -> None:
    policy = new(name)
    only = [Candidate("only", in_flight=1000, weight=0.0)]
    for prompt in ("", "a", "a longer prompt that fills several blocks"):
        assert policy.rank(only, RoutingContext(model="m", prompt=prompt)).order == only
