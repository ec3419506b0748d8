"""The affinity index: which prefix blocks each backend probably holds in its KV cache.

Per backend, a set of recently used block hashes sized like the engine's real cache: the engine's
``num_blocks * block_size`` tokens, converted to characters (``chars_per_token``) and then to the
policy's blocks; a configured default when the backend does not report its geometry. A request's match on
a backend is the number of its leading blocks found there.

Recency is a two-generation LRU approximation: inserts go into the young generation; when it is full it
becomes the old one and the previous old one is dropped whole. Each generation holds half the capacity,
so a backend remembers at least the most recent half of its capacity and at most all of it (an engine
cannot keep its whole cache for reusable prefixes either: running requests hold blocks). It was chosen
over an exact LRU (``OrderedDict``) by measurement: the exact one costs one ordered insert and one ordered
eviction per new block (~15-25 us for a fresh 8 KB prompt on the dev box, against ~2-3 us here), and
the whole routing decision must stay under 50 us.

Because a block hash names its whole prefix and a request inserts its whole chain into one generation,
each generation is a union of prefix chains, so a backend's set is prefix-closed: if block ``i`` is held,
so are all blocks before it. The match is therefore found by binary search (a handful of lookups even for
long prompts).

Memory is bounded: at most ``max_backends`` backends (least recently inserted dropped first), each holding
at most ``capacity`` blocks (two generations of ``capacity // 2``), itself at most
``max_blocks_per_backend``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from policies.base import Candidate

DEFAULT_CHARS_PER_TOKEN = 4.0
DEFAULT_CACHE_TOKENS = 262_144
DEFAULT_MAX_BLOCKS_PER_BACKEND = 65_536
DEFAULT_MAX_BACKENDS = 256


class _BackendBlocks:
    """One backend's block hashes in two generations."""

    __slots__ = ("capacity", "generation", "geometry", "old", "young")

    def __init__(self, capacity: int, geometry: tuple[int | None, int | None]) -> None:
        self.young: dict[int, None] = {}
        self.old: dict[int, None] = {}
        self.geometry = geometry
        self.capacity = capacity
        self.generation = max(1, capacity // 2)

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self.generation = max(1, capacity // 2)
        if len(self.old) > self.generation:
            self.old = {}
        if len(self.young) > self.generation:
            self.young = {}

    def add(self, hashes: Sequence[int]) -> None:
        generation = self.generation
        if len(hashes) > generation:
            hashes = hashes[:generation]  # a prefix of a chain is a chain: still prefix-closed
        young = self.young
        # Only blocks not already young grow the generation: a hot prefix sent again and again must not
        # roll the generations (that would drop the old one whole and halve what the index remembers).
        held = _leading(young, young, hashes) if hashes and hashes[0] in young else 0
        if held == len(hashes):
            return
        if len(young) + len(hashes) - held > generation:
            self.old = young
            self.young = young = {}
        young.update(dict.fromkeys(hashes))


class PrefixIndex:
    """Per-backend sets of recently used prefix block hashes."""

    __slots__ = (
        "_backends",
        "_block_chars",
        "_chars_per_token",
        "_default_cache_tokens",
        "_max_backends",
        "_max_blocks",
    )

    def __init__(
        self,
        block_chars: int,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        default_cache_tokens: int = DEFAULT_CACHE_TOKENS,
        max_blocks_per_backend: int = DEFAULT_MAX_BLOCKS_PER_BACKEND,
        max_backends: int = DEFAULT_MAX_BACKENDS,
    ) -> None:
        if block_chars < 1 or chars_per_token <= 0 or default_cache_tokens < 0:
            raise ValueError("block_chars >= 1, chars_per_token > 0 and default_cache_tokens >= 0 required")
        if max_blocks_per_backend < 1 or max_backends < 1:
            raise ValueError("max_blocks_per_backend and max_backends must be >= 1")
        self._block_chars = block_chars
        self._chars_per_token = chars_per_token
        self._default_cache_tokens = default_cache_tokens
        self._max_blocks = max_blocks_per_backend
        self._max_backends = max_backends
        self._backends: OrderedDict[str, _BackendBlocks] = OrderedDict()

    def capacity_for(self, cache_blocks: int | None, block_size: int | None) -> int:
        """How many policy blocks fit in ``cache_blocks`` engine blocks of ``block_size`` tokens."""
        if cache_blocks is not None and block_size is not None and cache_blocks > 0 and block_size > 0:
            tokens = cache_blocks * block_size
        else:
            tokens = self._default_cache_tokens
        blocks = int(tokens * self._chars_per_token) // self._block_chars
        return max(1, min(blocks, self._max_blocks))

    def matches(self, candidates: Sequence[Candidate], hashes: Sequence[int]) -> list[int]:
        """For each candidate, how many leading blocks of ``hashes`` its index holds."""
        if not hashes:
            return [0] * len(candidates)
        first = hashes[0]
        backends = self._backends
        found: list[int] = []
        hint = 0  # backends holding a prefix mostly hold the same length of it: try the last answer first
        for candidate in candidates:
            entry = backends.get(candidate.name)
            if entry is None or (first not in entry.young and first not in entry.old):
                found.append(0)
            else:
                hint = _leading(entry.young, entry.old, hashes, hint)
                found.append(hint)
        return found

    def match(self, backend: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` ``backend``'s index holds."""
        entry = self._backends.get(backend)
        if entry is None or not hashes or (hashes[0] not in entry.young and hashes[0] not in entry.old):
            return 0
        return _leading(entry.young, entry.old, hashes)

    def insert(
        self,
        backend: str,
        hashes: Sequence[int],
        cache_blocks: int | None = None,
        block_size: int | None = None,
    ) -> None:
        """Record that ``backend`` now holds ``hashes`` (a request was routed there).

        ``cache_blocks`` and ``block_size``, when known, (re)size the backend's index to its real cache.
        """
        backends = self._backends
        entry = backends.get(backend)
        geometry = (cache_blocks, block_size)
        if entry is None:
            entry = _BackendBlocks(self.capacity_for(cache_blocks, block_size), geometry)
            backends[backend] = entry
            while len(backends) > self._max_backends:
                backends.popitem(last=False)
        else:
            backends.move_to_end(backend)
            if entry.geometry != geometry and cache_blocks is not None and block_size is not None:
                entry.geometry = geometry
                entry.resize(self.capacity_for(cache_blocks, block_size))
        if hashes:
            entry.add(hashes)

    def forget(self, backend: str) -> None:
        self._backends.pop(backend, None)

    def size(self, backend: str) -> int:
        """Distinct blocks held for ``backend``."""
        entry = self._backends.get(backend)
        return 0 if entry is None else len(entry.young) + len(entry.old.keys() - entry.young.keys())

    def stored(self, backend: str) -> int:
        """Entries stored for ``backend`` (a block in both generations counts twice): the memory used."""
        entry = self._backends.get(backend)
        return 0 if entry is None else len(entry.young) + len(entry.old)

    def capacity(self, backend: str) -> int:
        entry = self._backends.get(backend)
        return 0 if entry is None else entry.capacity

    def total_stored(self) -> int:
        return sum(len(entry.young) + len(entry.old) for entry in self._backends.values())

    def backends(self) -> list[str]:
        return list(self._backends)


def _leading(young: dict[int, None], old: dict[int, None], hashes: Sequence[int], hint: int = 0) -> int:
    """The number of leading ``hashes`` held, given ``hashes[0]`` is and the set is prefix-closed.

    ``hint``, a likely answer, is checked first with two lookups; binary search does the rest.
    """
    low, high = 1, len(hashes)  # hashes[low - 1] is held; the answer is in [low, high]
    if 1 < hint <= high:
        block = hashes[hint - 1]
        if block in young or block in old:
            if hint == high:
                return hint
            block = hashes[hint]
            if block not in young and block not in old:
                return hint
            low = hint + 1
        else:
            high = hint - 1
    while low < high:
        middle = (low + high + 1) // 2
        block = hashes[middle - 1]
        if block in young or block in old:
            low = middle
        else:
            high = middle - 1
    return low
