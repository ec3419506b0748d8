"""Prefix hashing: chained, model-seeded, stable across processes; chat canonicalization."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.prefix_hash import PrefixHasher, canonical_chat, mix64

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400)


@settings(max_examples=60, deadline=None)
@given(prefix=TEXT, suffix=TEXT, block=st.integers(1, 40))
def test_a_shared_prefix_shares_exactly_its_full_blocks(prefix: str, suffix: str, block: int) -> None:
    hasher = PrefixHasher(block)
    whole = hasher.block_hashes("m", prefix + suffix)
    head = hasher.block_hashes("m", prefix)
    assert len(head) == len(prefix) // block
    assert len(whole) == len(prefix + suffix) // block
    assert whole[: len(head)] == head


def test_only_full_blocks_count() -> None:
    hasher = PrefixHasher(4)
    assert hasher.block_hashes("m", "abc") == []
    assert len(hasher.block_hashes("m", "abcd")) == 1
    assert len(hasher.block_hashes("m", "abcdefg")) == 1
    assert hasher.block_hashes("m", "abcdefg") == hasher.block_hashes("m", "abcdxyz")


def test_hash_chains_the_whole_prefix_not_just_the_block() -> None:
    hasher = PrefixHasher(4)
    first = hasher.block_hashes("m", "aaaaBBBB")
    second = hasher.block_hashes("m", "ccccBBBB")
    assert first[1] != second[1], "same block after a different prefix must hash differently"
    assert len(set(hasher.block_hashes("m", "xxxx" * 50))) == 50, "repeated blocks still chain"


def test_model_seeds_the_chain() -> None:
    hasher = PrefixHasher(8)
    text = "the same prompt text, two models"
    assert set(hasher.block_hashes("model-a", text)).isdisjoint(hasher.block_hashes("model-b", text))


def test_non_ascii_blocks_are_characters() -> None:
    hasher = PrefixHasher(3)
    assert len(hasher.block_hashes("m", "日本語のテキスト")) == 2
    assert hasher.block_hashes("m", "日本語x") == hasher.block_hashes("m", "日本語y")
    # The ASCII fast path and the character path agree on ASCII text.
    ascii_path = PrefixHasher(3).block_hashes("m", "abcdef")
    character_path = PrefixHasher(3).block_hashes("m", "abcdef\u00e9")
    assert character_path[:2] == ascii_path


def test_hashes_are_stable_across_processes() -> None:
    """Replicas must agree: a fresh interpreter (new hash randomization) computes the same values."""
    code = (
        "from policies.prefix_hash import PrefixHasher;"
        "h = PrefixHasher(8);"
        "print(h.block_hashes('m', 'stable across replicas!'), h.prefix_key('m', 'short', [], 1),"
        " h.routing_key('m', 'session-1'))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1
    hasher = PrefixHasher(8)
    here = (
        f"{hasher.block_hashes('m', 'stable across replicas!')} {hasher.prefix_key('m', 'short', [], 1)} "
        f"{hasher.routing_key('m', 'session-1')}\n"
    )
    assert runs == {here}


def test_known_values_do_not_drift() -> None:
    """Changing the hash changes every replica's routing at once: this pins it (crc32 chain)."""
    hasher = PrefixHasher(4)
    assert hasher.block_hashes("m", "abcdefgh") == [4288507787, 2551045448]


def test_prefix_key_uses_first_blocks_or_the_whole_short_prompt() -> None:
    hasher = PrefixHasher(4)
    long_a = hasher.block_hashes("m", "abcdXXXX")
    long_b = hasher.block_hashes("m", "abcdYYYY")
    assert hasher.prefix_key("m", "abcdXXXX", long_a, 1) == hasher.prefix_key("m", "abcdYYYY", long_b, 1)
    assert hasher.prefix_key("m", "abcdXXXX", long_a, 2) != hasher.prefix_key("m", "abcdYYYY", long_b, 2)
    assert hasher.prefix_key("m", "ab", [], 1) != hasher.prefix_key("m", "ac", [], 1)
    assert hasher.prefix_key("m", "ab", [], 1) == hasher.prefix_key("m", "ab", [], 1)


def test_routing_keys_live_in_their_own_domain() -> None:
    hasher = PrefixHasher(4)
    assert hasher.routing_key("m", "abc") != hasher.prefix_key("m", "abc", [], 1)
    assert hasher.routing_key("m", "abc") != hasher.routing_key("other", "abc")


def test_mix64_spreads_consecutive_inputs() -> None:
    outputs = [mix64(i) for i in range(4096)]
    assert len(set(outputs)) == 4096
    top_bits = [value >> 61 for value in outputs]
    assert all(400 < top_bits.count(bucket) < 630 for bucket in range(8))


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_chars"):
        PrefixHasher(0)


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
]


def test_canonical_chat_is_deterministic_and_concatenates_parts() -> None:
    text = canonical_chat(CHAT)
    assert text == canonical_chat([dict(m) for m in CHAT])
    assert "Hello there" in text
    assert text.index("You are terse.") < text.index("Hello there")


def test_a_conversation_is_a_prefix_of_its_continuation() -> None:
    longer = [*CHAT, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "More"}]
    assert canonical_chat(longer).startswith(canonical_chat(CHAT))


def test_canonical_chat_separates_roles_order_and_media() -> None:
    user_first = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    swapped = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert canonical_chat(user_first) != canonical_chat(swapped)
    joined = [{"role": "user", "content": "ab"}]
    split = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert canonical_chat(joined) != canonical_chat(split)
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/1.png"}}]}
    other = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/2.png"}}]}
    assert canonical_chat([image]) != canonical_chat([other])
    tool = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]}
    assert "tool_calls=" in canonical_chat([tool])
    assert canonical_chat([{"role": "user", "name": "ann", "content": "x"}]) != canonical_chat(
        [{"role": "user", "name": "bob", "content": "x"}]
    )
