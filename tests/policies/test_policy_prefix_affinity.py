"""prefix_affinity: branches, bounded load under skew, ring stability, replica agreement."""

from __future__ import annotations

import random
from collections import Counter
from math import ceil

from policies.base import Candidate, RoutingContext
from policies.prefix_affinity import PrefixAffinity, PrefixAffinityConfig

BLOCK = 16


def policy(**options: float) -> PrefixAffinity:
    return PrefixAffinity(PrefixAffinityConfig(block_chars=BLOCK, **options))  # type: ignore[arg-type]


def fleet(count: int, loads: dict[str, int] | None = None) -> list[Candidate]:
    loads = loads or {}
    return [Candidate(f"b{i}", in_flight=loads.get(f"b{i}", 0)) for i in range(count)]


def ctx(prompt: str, key: str | None = None) -> RoutingContext:
    return RoutingContext(model="m", prompt=prompt, routing_key=key)


def route(p: PrefixAffinity, candidates: list[Candidate], context: RoutingContext) -> str:
    ranking = p.rank(candidates, context)
    p.record(ranking.order[0].name, context)
    return ranking.order[0].name


TENANT = "You are the support bot of ACME. Answer in one line. " * 4  # 13 full blocks


def test_a_new_prefix_is_cold_then_hits_where_it_went() -> None:
    p = policy()
    candidates = fleet(4)
    first = p.rank(candidates, ctx(TENANT + "question one"))
    assert first.branch == "cold" and first.predicted_hit_blocks == 0
    p.record(first.order[0].name, ctx(TENANT + "question one"))
    second = p.rank(candidates, ctx(TENANT + "question two, a different one"))
    assert second.branch == "hit"
    assert second.order[0] == first.order[0]
    assert second.predicted_hit_blocks == len(TENANT) // BLOCK


def test_the_longest_prefix_wins() -> None:
    p = policy()
    candidates = fleet(4)
    conversation = TENANT + "user: hi. assistant: hello. user: tell me more about the product line."
    p.index.insert("b1", p.hasher.block_hashes("m", conversation[:40]))
    p.index.insert("b2", p.hasher.block_hashes("m", conversation))
    p.index.insert("b3", p.hasher.block_hashes("m", conversation[:80]))
    ranking = p.rank(candidates, ctx(conversation + " more"))
    assert [c.name for c in ranking.order[:3]] == ["b2", "b3", "b1"]
    assert ranking.branch == "hit"
    assert ranking.predicted_hit_blocks == len(conversation) // BLOCK


def test_a_hot_prefix_spills_when_its_backend_is_over_the_bound() -> None:
    p = policy(bound_min_load=0)  # the bound alone (the default floor of 8 keeps b0 below)
    prompt = TENANT + "q"
    p.index.insert("b0", p.hasher.block_hashes("m", prompt))
    busy = fleet(4, {"b0": 6, "b1": 1, "b2": 1, "b3": 0})  # bound: ceil(1.25 * 9 / 4) = 3
    ranking = p.rank(busy, ctx(prompt))
    assert ranking.branch == "spill"
    assert ranking.order[0].name != "b0" and ranking.order[-1].name == "b0"
    p.record(ranking.order[0].name, ctx(prompt))
    assert p.index.match(ranking.order[0].name, p.hasher.block_hashes("m", prompt)) > 0, "speculative insert"


def test_below_bound_min_load_a_hot_prefix_stays_put() -> None:
    prompt = TENANT + "q"
    busy = fleet(4, {"b0": 6, "b1": 1, "b2": 1, "b3": 0})  # over the bound of 3 (see above)
    for min_load, expected in ((7, "hit"), (6, "spill"), (0, "spill")):
        p = policy(bound_min_load=min_load)
        p.index.insert("b0", p.hasher.block_hashes("m", prompt))
        ranking = p.rank(busy, ctx(prompt))
        assert ranking.branch == expected, (min_load, ranking.branch)
        assert (ranking.order[0].name == "b0") == (expected == "hit")


def test_load_trades_against_a_small_advantage() -> None:
    p = policy(w_miss=1.0, w_load=2.0)
    prompt = TENANT + "q"
    hashes = p.hasher.block_hashes("m", prompt)
    p.index.insert("b0", hashes)
    p.index.insert("b1", hashes[:-1])  # one block shorter
    ranking = p.rank(fleet(4, {"b0": 3, "b1": 0, "b2": 2, "b3": 2}), ctx(prompt))
    assert ranking.order[0].name == "b1", "one block is worth less than three requests of load"
    assert ranking.branch == "spill"
    assert p.rank(fleet(4, {"b0": 1, "b1": 1, "b2": 2, "b3": 2}), ctx(prompt)).order[0].name == "b0"


def test_a_routing_key_sticks_to_one_backend_whatever_the_prompt() -> None:
    p = policy()
    candidates = fleet(8)
    chosen = {route(p, candidates, ctx(f"prompt {i} " * 5, key="session-42")) for i in range(20)}
    assert len(chosen) == 1
    assert p.rank(candidates, ctx("x", key="session-42")).branch == "key"
    sessions = {route(p, candidates, ctx("same prompt", key=f"s{i}")) for i in range(64)}
    assert len(sessions) >= 6, "different keys spread"


def test_fallback_when_every_backend_is_over_the_bound() -> None:
    p = policy(load_factor=1.0, bound_min_load=0)
    candidates = [
        Candidate("a", queue_depth=2.5),
        Candidate("b", queue_depth=2.4),
        Candidate("c", queue_depth=2.6),
    ]  # bound: ceil(1.0 * (7.5 + 1) / 3) = 3, and every load + 1 exceeds it
    ranking = p.rank(candidates, ctx(TENANT))
    assert ranking.branch == "fallback"
    assert [c.name for c in ranking.order] == ["b", "a", "c"]


def test_empty_candidates_give_an_empty_ranking() -> None:
    assert policy().rank([], ctx("x")).order == []


def test_record_without_rank_and_forget() -> None:
    p = policy()
    p.record("b1", ctx(TENANT))
    assert p.rank(fleet(3), ctx(TENANT + "x")).order[0].name == "b1"
    p.forget("b1")
    assert p.rank(fleet(3), ctx(TENANT + "x")).branch == "cold"


def test_record_sizes_the_index_from_the_candidates_geometry() -> None:
    p = policy()
    candidates = [Candidate("g", cache_blocks=50, block_size=16), Candidate("h")]
    context = ctx(TENANT)
    p.rank(candidates, context)
    p.record("g", context)
    assert p.index.capacity("g") == 50 * 16 * 4 // BLOCK


def test_replicas_with_the_same_inputs_decide_identically() -> None:
    """Two independent instances (two gateway replicas) fed the same stream agree on every decision."""
    rng = random.Random(11)
    replicas = [policy(), policy()]
    for _ in range(400):
        loads = {f"b{i}": rng.randrange(6) for i in range(6)}
        candidates = fleet(6, loads)
        prompt = f"tenant {rng.randrange(12)} " * 6 + f"question {rng.randrange(1000)}"
        key = f"s{rng.randrange(20)}" if rng.random() < 0.2 else None
        rankings = [r.rank(candidates, ctx(prompt, key)) for r in replicas]
        assert rankings[0] == rankings[1]
        for r in replicas:
            r.record(rankings[0].order[0].name, ctx(prompt, key))


def cold_owner(p: PrefixAffinity, candidates: list[Candidate], key: int) -> str:
    return p.rank(candidates, ctx(f"cold key {key}")).order[0].name


def test_cold_keys_spread_over_the_fleet() -> None:
    p = policy()
    candidates = fleet(8)
    counts = Counter(cold_owner(p, candidates, key) for key in range(8000))
    assert set(counts) == {c.name for c in candidates}
    assert max(counts.values()) < 1.35 * 1000 and min(counts.values()) > 0.65 * 1000


def test_removing_one_of_eight_backends_moves_only_its_cold_keys() -> None:
    p = policy()
    full = fleet(8)
    without = [c for c in full if c.name != "b5"]
    keys = range(8000)
    before = {key: cold_owner(p, full, key) for key in keys}
    after = {key: cold_owner(p, without, key) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(before[key] == "b5" for key in moved)
    assert len(moved) / len(before) < 1.6 / 8


def zipf_cumulative_weights(keys: int, exponent: float = 1.1) -> list[float]:
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, keys + 1):
        total += 1 / rank**exponent
        cumulative.append(total)
    return cumulative


def run_skewed_stream(p: PrefixAffinity, *, use_keys: bool, steps: int = 4000) -> Counter[str]:
    """Zipf(1.1) tenants, in-flight counters, a steady ~48 requests in flight over 8 backends.

    Checks the bounded-load guarantee at every decision: the chosen backend's load after taking the
    request is at most ceil(c * (total + 1) / n), or ``bound_min_load`` when that is larger.
    """
    rng = random.Random(5)
    cumulative = zipf_cumulative_weights(200)
    names = [f"b{i}" for i in range(8)]
    in_flight = dict.fromkeys(names, 0)
    running: list[str] = []
    branches: Counter[str] = Counter()
    worst_excess = -1.0
    for step in range(steps):
        while len(running) >= 48:
            finished = running.pop(rng.randrange(len(running)))
            in_flight[finished] -= 1
        tenant = rng.choices(range(200), cum_weights=cumulative, k=1)[0]
        prompt = f"tenant-{tenant} system prompt, shared by all its requests. " * 2 + f"q{step}"
        context = ctx(prompt, key=f"tenant-{tenant}" if use_keys else None)
        candidates = [Candidate(name, in_flight=in_flight[name]) for name in names]
        total = sum(in_flight.values())
        ranking = p.rank(candidates, context)
        chosen = ranking.order[0].name
        branches[ranking.branch] += 1
        p.record(chosen, context)
        in_flight[chosen] += 1
        running.append(chosen)
        bound = max(ceil(p.config.load_factor * (total + 1) / len(names)), p.config.bound_min_load)
        worst_excess = max(worst_excess, in_flight[chosen] - bound)
        assert in_flight[chosen] <= bound
        mean_after = (total + 1) / len(names)
        assert max(in_flight.values()) <= max(ceil(p.config.load_factor * mean_after),
                                              p.config.bound_min_load) + 1
    assert worst_excess <= 0
    return branches


def test_bounded_load_holds_under_a_zipf_prompt_stream() -> None:
    for min_load in (0, 8):  # 6 in flight per backend on average: the floor of 8 changes decisions
        branches = run_skewed_stream(policy(bound_min_load=min_load), use_keys=False)
        assert branches["hit"] > 0 and branches["cold"] > 0
        assert branches["spill"] > 0, "the hottest tenant must spill, not melt one backend"
        assert branches["fallback"] == 0


def test_bounded_load_holds_under_a_zipf_routing_key_stream() -> None:
    branches = run_skewed_stream(policy(bound_min_load=0), use_keys=True)
    assert set(branches) == {"key"}


def test_a_prefix_that_dominates_a_busy_backend_is_shed_first() -> None:
    hot, small = TENANT + "hot q", "A small tenant's own long preamble, cached on b0. " * 6 + "q"
    busy = fleet(3, {"b0": 8, "b1": 6, "b2": 6})  # b0 within the bound (9), above the mean, at the floor
    for hot_share, shed in ((0.5, True), (0.0, False)):
        p = policy(hot_share=hot_share, hot_window=8)
        for prompt in (hot, small):  # both cached on b0 only
            p.index.insert("b0", p.hasher.block_hashes("m", prompt))
        for _ in range(5):  # 5 of b0's last 8 arrivals were the hot prefix, 3 the small tenant
            p.record("b0", ctx(hot))
        for _ in range(3):
            p.record("b0", ctx(small))
        ranking = p.rank(busy, ctx(hot))
        assert (ranking.order[0].name != "b0") is shed, "its cache on b0 outweighs b0's extra load"
        assert ranking.branch == ("spill" if shed else "hit")
        # The small tenant keeps b0 either way (3 of 8 is under the share).
        assert p.rank(busy, ctx(small)).order[0].name == "b0"
    # Not shed at or below the mean, nor below bound_min_load.
    p = policy(hot_window=8)
    p.index.insert("b0", p.hasher.block_hashes("m", hot))
    for _ in range(8):
        p.record("b0", ctx(hot))
    assert p.rank(fleet(3, {"b0": 9, "b1": 9, "b2": 9}), ctx(hot)).order[0].name == "b0"
    assert p.rank(fleet(3, {"b0": 6, "b1": 1, "b2": 1}), ctx(hot)).order[0].name == "b0"
