"""The sim's KV block cache: prefix reuse by chained hashes, LRU eviction, held blocks never evicted."""

from __future__ import annotations

from backends.sim.kv_cache import KVCache, block_hashes

BLOCK = 4


def words(n: int, tag: str = "w") -> list[str]:
    return [f" {tag}{i}" for i in range(n)]


def hashes(tokens: list[str]) -> list[bytes]:
    return block_hashes(tokens, BLOCK, b"", 0, len(tokens))


def store(cache: KVCache, tokens: list[str]) -> list[int]:
    """Allocate blocks for ``tokens``, register the full ones, and release them (request finished)."""
    blocks = cache.allocate(-(-len(tokens) // BLOCK))
    assert blocks is not None
    for block, block_hash in zip(blocks, hashes(tokens), strict=False):
        cache.register(block, block_hash)
    cache.release(blocks)
    return blocks


def test_only_full_blocks_are_hashed_and_hashes_chain_over_the_prefix() -> None:
    tokens = words(10)
    assert len(hashes(tokens)) == 2  # the partial third block is never hashed
    other_first_block = [" x", *tokens[1:]]
    assert hashes(tokens)[0] != hashes(other_first_block)[0]
    # Same second block, different first block: the chain makes the second hash differ too.
    assert hashes(tokens)[1] != hashes(other_first_block)[1]
    # Resuming the chain from a parent gives the same hashes.
    first = hashes(tokens)[:1]
    assert block_hashes(tokens, BLOCK, first[0], 1, len(tokens)) == hashes(tokens)[1:]


def test_finished_blocks_stay_cached_and_a_shared_prefix_hits() -> None:
    cache = KVCache(num_blocks=9, block_size=BLOCK)
    tokens = words(10)
    store(cache, tokens)
    assert cache.num_free == 8  # free again, but still cached
    assert cache.num_cached == 2
    longer = [*tokens[:8], " other", " tail", " more", " x"]
    hits = cache.match_prefix(hashes(longer))
    assert len(hits) == 2
    cache.touch(hits)
    assert cache.num_free == 6 and all(cache.ref_count(b) == 1 for b in hits)
    diverging = [*tokens[:4], " zz", *tokens[5:]]
    assert len(cache.match_prefix(hashes(diverging))) == 1


def test_eviction_is_least_recently_used_and_tail_blocks_go_first() -> None:
    cache = KVCache(num_blocks=7, block_size=BLOCK)  # 6 usable
    a, b = words(8, "a"), words(8, "b")
    blocks_a = store(cache, a)
    store(cache, b)
    # Reuse a: it becomes the most recently used.
    hits = cache.match_prefix(hashes(a))
    assert hits == blocks_a
    cache.touch(hits)
    cache.release(hits)
    # Pressure: 4 new blocks evict the 2 free never-hashed blocks first, then b (older), tail first.
    assert cache.allocate(4) is not None
    assert cache.match_prefix(hashes(b)) == []
    assert cache.match_prefix(hashes(a)) == blocks_a
    assert cache.evictions == 2


def test_held_blocks_are_never_evicted() -> None:
    cache = KVCache(num_blocks=5, block_size=BLOCK)  # 4 usable
    tokens = words(8)
    held = cache.allocate(2)
    assert held is not None
    for block, block_hash in zip(held, hashes(tokens), strict=True):
        cache.register(block, block_hash)
    assert cache.allocate(3) is None  # only 2 free; held ones are not candidates
    fresh = cache.allocate(2)
    assert fresh is not None and not set(fresh) & set(held)
    assert cache.match_prefix(hashes(tokens)) == held
    assert cache.usage == 1.0


def test_two_requests_share_blocks_and_release_independently() -> None:
    cache = KVCache(num_blocks=5, block_size=BLOCK)
    tokens = words(4)
    first = store(cache, tokens)
    hits = cache.match_prefix(hashes(tokens))
    cache.touch(hits)
    cache.touch(hits)
    assert cache.ref_count(first[0]) == 2
    cache.release(hits)
    assert cache.num_free == 3
    cache.release(hits)
    assert cache.num_free == 4 and cache.match_prefix(hashes(tokens)) == first


def test_reset_prefix_cache_forgets_free_blocks_only() -> None:
    cache = KVCache(num_blocks=9, block_size=BLOCK)
    free_tokens, held_tokens = words(4, "f"), words(4, "h")
    store(cache, free_tokens)
    held = cache.allocate(1)
    assert held is not None
    cache.register(held[0], hashes(held_tokens)[0])
    assert cache.reset_prefix_cache() == 1
    assert cache.match_prefix(hashes(free_tokens)) == []
    assert cache.match_prefix(hashes(held_tokens)) == held
