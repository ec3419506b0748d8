"""The two block-pool rules of vLLM 0.32 that the calibration against the real server brought into the
simulator's KV cache (``vllm/v1/core/block_pool.py``): a freed block without a hash goes to the head of
the free queue (reused first, ``free_blocks``), and two blocks may hold the same hash, a lookup finding
the first (``BlockHashToBlockMap``)."""

from __future__ import annotations

from backends.sim.kv_cache import KVCache, block_hashes

BLOCK = 4


def hashes(tag: str, blocks: int) -> list[bytes]:
    tokens = [f" {tag}{i}" for i in range(blocks * BLOCK)]
    return block_hashes(tokens, BLOCK, b"", 0, len(tokens))


def test_a_freed_partial_block_is_reused_before_cached_ones() -> None:
    cache = KVCache(num_blocks=9, block_size=BLOCK)  # 8 usable: 1..8
    blocks = cache.allocate(3)  # a request of 2 full blocks and a partial third
    assert blocks == [1, 2, 3]
    for block, block_hash in zip(blocks, hashes("a", 2), strict=False):
        cache.register(block, block_hash)
    cache.release(blocks)
    # Never-used 4..8 stay first in line except for the partial block 3, now at the very head;
    # the cached blocks follow at the tail, the request's last block first.
    assert cache.free_order() == [3, 4, 5, 6, 7, 8, 2, 1]
    assert cache.allocate(1) == [3]
    assert cache.evictions == 0 and cache.match_prefix(hashes("a", 2)) == [1, 2]


def test_partial_blocks_of_one_release_keep_their_order_at_the_head() -> None:
    cache = KVCache(num_blocks=5, block_size=BLOCK)
    first = cache.allocate(2)
    second = cache.allocate(2)
    assert first is not None and second is not None
    cache.release([*first, *second])  # no hashes: all four go to the head, last block first
    assert cache.free_order() == [second[1], second[0], first[1], first[0]]


def test_duplicate_hashes_stay_cached_and_the_first_holder_is_found() -> None:
    cache = KVCache(num_blocks=9, block_size=BLOCK)
    shared = hashes("s", 1)[0]
    a = cache.allocate(1)
    b = cache.allocate(1)  # computed concurrently: the same content in another block
    assert a is not None and b is not None
    cache.register(a[0], shared)
    cache.register(b[0], shared)
    assert cache.num_cached == 2 and cache.match_prefix([shared]) == a
    cache.release(a)
    cache.release(b)
    assert cache.free_order()[-2:] == [a[0], b[0]]  # both cached, so both at the tail
    while cache.free_order()[0] != a[0]:
        assert cache.allocate(1) is not None
    assert cache.allocate(1) == a  # evicts a's copy; b still serves the hash
    assert cache.match_prefix([shared]) == b
    assert cache.reset_prefix_cache() == 1 and cache.match_prefix([shared]) == []
