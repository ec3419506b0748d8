"""The affinity index: leading-block matches, LRU eviction, sizing from cache geometry, memory bound."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import Candidate
from policies.prefix_hash import PrefixHasher
from policies.prefix_index import PrefixIndex

HASHER = PrefixHasher(8)


def blocks(text: str) -> list[int]:
    return HASHER.block_hashes("m", text)


def test_a_prefix_hits_after_insert() -> None:
    index = PrefixIndex(block_chars=8)
    prompt = "system: be brief. user: what is a KV cache?"
    assert index.match("a", blocks(prompt)) == 0
    index.insert("a", blocks(prompt))
    assert index.match("a", blocks(prompt)) == len(blocks(prompt))
    follow_up = prompt + " assistant: a cache. user: of what?"
    assert index.match("a", blocks(follow_up)) == len(blocks(prompt))
    assert index.match("b", blocks(prompt)) == 0


def test_matches_count_leading_blocks_per_candidate() -> None:
    index = PrefixIndex(block_chars=8)
    shared = "0123456789abcdef" * 4  # 8 blocks
    index.insert("short", blocks(shared[:16]))
    index.insert("long", blocks(shared[:48]))
    index.insert("other", blocks("unrelated text that shares nothing"))
    candidates = [Candidate("short"), Candidate("long"), Candidate("other"), Candidate("unknown")]
    assert index.matches(candidates, blocks(shared + "tail")) == [2, 6, 0, 0]
    assert index.matches(candidates, []) == [0, 0, 0, 0]


def test_a_different_prefix_breaks_the_match_even_with_equal_later_blocks() -> None:
    index = PrefixIndex(block_chars=8)
    index.insert("a", blocks("AAAAAAAA" + "sharedXX" * 3))
    assert index.match("a", blocks("BBBBBBBB" + "sharedXX" * 3)) == 0


def test_recency_keeps_touched_prefixes_and_drops_the_least_recent() -> None:
    index = PrefixIndex(block_chars=8, default_cache_tokens=32, chars_per_token=4.0)  # 16 blocks
    assert index.capacity_for(None, None) == 16
    a, b, c, d = (blocks(letter * 32) for letter in "abcd")  # 4 blocks each
    for chain in (a, b, c):
        index.insert("x", chain)
    assert [index.match("x", chain) for chain in (a, b, c)] == [4, 4, 4]
    index.insert("x", a)  # touching a makes it recent again
    index.insert("x", d)
    assert [index.match("x", chain) for chain in (a, b, c, d)] == [4, 0, 4, 4], "b was least recent"
    assert index.size("x") == 12 and index.stored("x") <= 16


def test_a_hot_prefix_sent_again_does_not_roll_the_generations() -> None:
    index = PrefixIndex(block_chars=8, default_cache_tokens=32, chars_per_token=4.0)  # 2 x 8 blocks
    a, b = blocks("a" * 32), blocks("b" * 24)  # 4 and 3 blocks: 7 of the young generation's 8
    index.insert("x", a)
    index.insert("x", b)
    for _ in range(10):
        index.insert("x", a)  # already young: nothing new, so nothing may be dropped
    assert [index.match("x", chain) for chain in (a, b)] == [4, 3]
    follow_up = blocks("a" * 32 + "z" * 8)  # one new block fills the generation exactly
    index.insert("x", follow_up)
    assert [index.match("x", chain) for chain in (a, b, follow_up)] == [4, 3, 5]
    c = blocks("c" * 16)
    index.insert("x", c)  # two new blocks roll the generations; the old one is still consulted
    assert [index.match("x", chain) for chain in (a, b, c)] == [4, 3, 2]


def test_a_chain_longer_than_a_generation_keeps_its_head() -> None:
    index = PrefixIndex(block_chars=8, default_cache_tokens=16, chars_per_token=4.0)  # 8 blocks
    long_chain = blocks("y" * 200)  # 25 blocks
    index.insert("x", long_chain)
    assert index.match("x", long_chain) == 4
    assert index.stored("x") <= 8


def test_capacity_follows_the_engines_cache_geometry() -> None:
    index = PrefixIndex(block_chars=64, chars_per_token=4.0, default_cache_tokens=1024)
    # vLLM: 1000 blocks of 16 tokens = 16000 tokens = 64000 chars = 1000 blocks of 64 chars.
    assert index.capacity_for(1000, 16) == 1000
    assert index.capacity_for(None, 16) == 64
    assert index.capacity_for(0, 16) == 64
    index.insert("a", blocks("x" * 80), cache_blocks=10, block_size=16)
    assert index.capacity("a") == 10
    index.insert("a", blocks("y" * 80), cache_blocks=40, block_size=16)
    assert index.capacity("a") == 40, "a new geometry resizes the backend's index"
    index.insert("a", blocks("z" * 80))
    assert index.capacity("a") == 40, "an unknown geometry keeps the last known size"


def test_capacity_is_capped() -> None:
    index = PrefixIndex(block_chars=8, max_blocks_per_backend=100)
    assert index.capacity_for(10**9, 16) == 100


def test_a_long_run_stays_under_the_memory_bound() -> None:
    """1e5 inserts over many prompts and backends: every backend's store and the whole index stay bounded."""
    index = PrefixIndex(block_chars=8, default_cache_tokens=2000, max_blocks_per_backend=5000, max_backends=6)
    capacity = index.capacity_for(None, None)
    rng = random.Random(7)
    for step in range(100_000):
        backend = f"b{rng.randrange(10)}"
        chain = [rng.getrandbits(32), rng.getrandbits(32)] if step % 3 else [step]
        index.insert(backend, chain)
        if step % 1000 == 0:
            assert all(index.stored(name) <= capacity for name in index.backends())
    assert all(index.stored(name) <= capacity for name in index.backends())
    assert len(index.backends()) <= 6
    assert index.total_stored() <= 6 * capacity


def test_forget_drops_a_backend() -> None:
    index = PrefixIndex(block_chars=8)
    index.insert("a", blocks("a prompt of a few blocks"))
    index.insert("b", blocks("a prompt of a few blocks"))
    index.forget("a")
    index.forget("never-seen")
    assert index.backends() == ["b"]
    assert index.match("a", blocks("a prompt of a few blocks")) == 0
    assert index.match("b", blocks("a prompt of a few blocks")) == 3


@settings(max_examples=40, deadline=None)
@given(
    operations=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["p", "q", "r"]), st.integers(0, 60)), max_size=60
    ),
    capacity_tokens=st.integers(1, 40),
)
def test_binary_search_matches_agree_with_a_linear_scan(
    operations: list[tuple[str, str, int]], capacity_tokens: int
) -> None:
    """The prefix-closed invariant holds under any insert/evict sequence, so binary search (with or
    without a hint from another backend's match) agrees with a linear scan."""
    index = PrefixIndex(block_chars=8, default_cache_tokens=capacity_tokens, chars_per_token=4.0)
    candidates = [Candidate(name) for name in "abcab"]
    for backend, letter, length in operations:
        index.insert(backend, blocks(letter * length))
        for probe_letter in "pqr":
            probe = blocks(probe_letter * 60)
            linear = []
            for candidate in candidates:
                entry = index._backends.get(candidate.name)
                held = set(entry.young) | set(entry.old) if entry is not None else set()
                linear.append(next((i for i, h in enumerate(probe) if h not in held), len(probe)))
            assert index.matches(candidates, probe) == linear
            assert [index.match(c.name, probe) for c in candidates] == linear
