"""The simulated KV cache: fixed-size token blocks with automatic prefix caching as vLLM does it.

- A block is identified, once full, by a chained hash of its tokens and everything before them (the
  caller computes the hashes; see ``block_hashes``). Only full blocks are ever registered or reused.
- Blocks are reference counted: running requests hold theirs (a held block is never evicted, even when
  it is also in the hash map, so two requests can share a prefix).
- A block whose count drops to zero goes to the tail of the free queue with its hash kept, so a later
  request can still hit it; allocation takes blocks from the head and evicts their hash then. The free
  queue is therefore an LRU of cached blocks. A freed block without a hash (a partial block, never
  reusable) goes to the *head* instead, to be reused first (vLLM 0.32's ``BlockPool.free_blocks``).
  A request's blocks are released in reverse order so a sequence's tail is evicted before its head,
  as vLLM does.
- Two blocks may hold the same hash (two requests computed the same prefix at the same time); both
  stay cached and a lookup finds the first one, as in vLLM's ``BlockHashToBlockMap``.
- Block 0 is reserved like vLLM's null block, so ``num_blocks - 1`` blocks are usable and
  ``usage`` is ``1 - free / (num_blocks - 1)`` (vLLM's ``kv_cache_usage_perc``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(tokens: Sequence[str], block_size: int, parent: bytes, start_block: int,
                 limit_tokens: int) -> list[bytes]:
    """Chained hashes of the full blocks from ``start_block`` that lie within ``tokens[:limit_tokens]``.

    ``parent`` is the hash of block ``start_block - 1`` (``b""`` for the first block)."""
    hashes: list[bytes] = []
    for index in range(start_block, limit_tokens // block_size):
        text = "\x00".join(tokens[index * block_size : (index + 1) * block_size])
        parent = hashlib.blake2b(parent + text.encode(), digest_size=16).digest()
        hashes.append(parent)
    return hashes


class KVCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2 or block_size < 1:
            raise ValueError("the KV cache needs at least 2 blocks and a block size of at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._by_hash: dict[bytes, dict[int, None]] = {}  # hash -> blocks holding it, oldest first
        self._free: OrderedDict[int, None] = OrderedDict((block, None) for block in range(1, num_blocks))
        self.evictions = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / (self.num_blocks - 1)

    @property
    def num_cached(self) -> int:
        return sum(len(blocks) for blocks in self._by_hash.values())

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def is_cached(self, block_hash: bytes) -> bool:
        return block_hash in self._by_hash

    def free_order(self) -> list[int]:
        """Free blocks from the next one to be evicted to the most recently freed."""
        return list(self._free)

    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """Blocks holding the longest leading run of ``hashes`` (no side effect)."""
        blocks: list[int] = []
        for block_hash in hashes:
            holders = self._by_hash.get(block_hash)
            if not holders:
                break
            blocks.append(next(iter(holders)))
        return blocks

    def free_after_touch(self, blocks: Sequence[int]) -> int:
        """How many blocks would stay free after ``touch(blocks)``."""
        return len(self._free) - sum(1 for block in blocks if self._refs[block] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cache-hit blocks, pulling free ones out of the eviction queue."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks from the head of the free queue (evicting their hashes), or None."""
        if count > len(self._free):
            return None
        blocks: list[int] = []
        for _ in range(count):
            block, _unused = self._free.popitem(last=False)
            if self._hash[block] is not None:
                self._forget(block)
                self.evictions += 1
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def register(self, block: int, block_hash: bytes) -> None:
        """Mark a full block as reusable under ``block_hash`` (lookups find the first holder, as in vLLM)."""
        if self._hash[block] is not None:
            return
        self._hash[block] = block_hash
        self._by_hash.setdefault(block_hash, {})[block] = None

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference per block, tail first. Unreferenced blocks become evictable: cached ones
        at the tail of the free queue (hash kept, LRU), the others at its head (reused first)."""
        reuse_first: list[int] = []
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash[block] is None:
                    reuse_first.append(block)
                else:
                    self._free[block] = None
        for block in reversed(reuse_first):  # so that reuse_first[0] ends up at the very head
            self._free[block] = None
            self._free.move_to_end(block, last=False)

    def _forget(self, block: int) -> None:
        old = self._hash[block]
        if old is not None:
            holders = self._by_hash[old]
            del holders[block]
            if not holders:
                del self._by_hash[old]
            self._hash[block] = None

    def reset_prefix_cache(self) -> int:
        """Forget the hashes of all free blocks (vLLM's /reset_prefix_cache); returns how many."""
        forgotten = 0
        for block in self._free:
            if self._hash[block] is not None:
                self._forget(block)
                forgotten += 1
        return forgotten
