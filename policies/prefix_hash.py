"""Prefix block hashing: canonical prompt text to chained, model-seeded block hashes.

Every gateway replica must compute the same hashes for the same prompt, so the hash is a stable function
of the bytes, never Python's per-process randomized ``hash()``. The chain is ``h_0 = H(model)``,
``h_i = H(h_{i-1} || block_i)``: block ``i``'s hash identifies the whole prefix up to and including block
``i``, so two prompts share block hashes exactly as far as they share text (at block granularity). Only
full blocks count; a trailing partial block is never hashed because an engine cannot reuse it either.

``H`` is CRC-32 (``zlib.crc32(block, h_{i-1})`` is exactly a chain with a 32-bit state). It was measured
against blake2b (8-byte digests) in CPython on the 2-core dev box, 8 KB prompt, 256-character blocks:
crc32 ~13 us, blake2b ~35-50 us (the call, not the bytes, dominates), and the whole decision must stay
under 50 us. CRC is not collision resistant, and only routing depends on it: a false match (probability
about index_size / 2**32 per lookup, ~1e-5 for a 64k-block index) sends one request to a backend that
lacks its prefix. Ring positions spread the 32-bit values over 64 bits by Fibonacci hashing (one multiply).

Blocks are ``block_chars`` characters of the canonical text, hashed as UTF-8. The default, 256 characters
(about 64 tokens, four 16-token vLLM blocks), keeps an 8 KB prompt at 32 blocks; routing only needs to
know roughly how much of a prompt is cached, so the coarser grain loses little (benchmarks/routing_micro.py
has the figures for other sizes).

Also here: ``canonical_chat``, the deterministic serialization of chat messages (role + content in order),
so the gateway feeds the hasher the same text for the same conversation on every replica, and a
conversation's serialization is a prefix of its continuation's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from zlib import crc32

DEFAULT_BLOCK_CHARS = 256
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MAX_SEEDS = 64
_DOMAIN_BLOCK = b"llmgw-prefix"
_DOMAIN_KEY = b"llmgw-key"
# Message separators: ASCII record/unit separators never appear in normal chat text.
_MESSAGE_START = "\x1e"
_FIELD_SEP = "\x1f"
_PART_SEP = "\x1d"


def canonical_chat(messages: Iterable[Mapping[str, object]]) -> str:
    """Serialize chat messages deterministically: role and content in order, content parts concatenated.

    Text parts contribute their text; any other part (image, audio, ...) contributes a sorted-key JSON
    rendering, so different media give different prefixes. ``name``, ``tool_calls`` and ``tool_call_id``
    are included when present because they change what the engine prefills.
    """
    pieces: list[str] = []
    for message in messages:
        pieces.append(_MESSAGE_START)
        pieces.append(str(message.get("role", "")))
        name = message.get("name")
        if name is not None:
            pieces.append(_FIELD_SEP + str(name))
        pieces.append(_FIELD_SEP)
        _append_content(pieces, message.get("content"))
        for extra in ("tool_calls", "tool_call_id"):
            value = message.get(extra)
            if value is not None:
                pieces.append(_FIELD_SEP + extra + "=" + _stable_json(value))
    return "".join(pieces)


def _append_content(pieces: list[str], content: object) -> None:
    if content is None:
        return
    if isinstance(content, str):
        pieces.append(content)
        return
    if isinstance(content, Iterable) and not isinstance(content, bytes | Mapping):
        for part in content:
            if isinstance(part, Mapping) and part.get("type", "text") == "text" and "text" in part:
                pieces.append(str(part["text"]))
            elif isinstance(part, str):
                pieces.append(part)
            else:
                pieces.append(_PART_SEP + _stable_json(part) + _PART_SEP)
        return
    pieces.append(_stable_json(content))


def _stable_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class PrefixHasher:
    """Cuts canonical text into ``block_chars`` blocks and chains their hashes from a per-model seed."""

    __slots__ = ("_block_chars", "_seeds")

    def __init__(self, block_chars: int = DEFAULT_BLOCK_CHARS) -> None:
        if block_chars < 1:
            raise ValueError(f"block_chars must be >= 1, got {block_chars}")
        self._block_chars = block_chars
        self._seeds: dict[str, int] = {}

    @property
    def block_chars(self) -> int:
        return self._block_chars

    def seed(self, model: str) -> int:
        """``h_0``: the chain's start, so equal text under different models never shares blocks."""
        seed = self._seeds.get(model)
        if seed is None:
            seed = crc32(model.encode(), crc32(_DOMAIN_BLOCK))
            if len(self._seeds) >= _MAX_SEEDS:
                self._seeds.clear()
            self._seeds[model] = seed
        return seed

    def block_hashes(self, model: str, text: str) -> list[int]:
        """Chained hashes of the full blocks of ``text``: element ``i`` covers ``text[: (i + 1) * B]``."""
        size = self._block_chars
        full = len(text) - len(text) % size
        if text.isascii():
            data = text.encode("ascii")
            blocks = [data[start : start + size] for start in range(0, full, size)]
        else:
            blocks = [text[start : start + size].encode() for start in range(0, full, size)]
        chained = self.seed(model)
        hashes: list[int] = []
        append = hashes.append
        for block in blocks:
            chained = crc32(block, chained)
            append(chained)
        return hashes

    def prefix_key(self, model: str, text: str, hashes: list[int], key_blocks: int) -> int:
        """The cold-routing ring position: the hash of the first ``key_blocks`` blocks, or of the whole
        prompt when it is shorter than that."""
        if len(hashes) >= key_blocks:
            return ring_position(hashes[key_blocks - 1])
        return ring_position(crc32(text.encode(), self.seed(model)))

    def routing_key(self, model: str, key: str) -> int:
        """The ring position of a client routing key (session id, user), in its own hash domain."""
        return ring_position(crc32(key.encode(), crc32(_DOMAIN_KEY, self.seed(model))))


def ring_position(value: int) -> int:
    """Fibonacci hashing: a 32-bit hash times 2**64 / golden ratio, so nearby values land far apart."""
    return (value * _GOLDEN) & _MASK64


def mix64(value: int) -> int:
    """splitmix64: a well-mixed 64-bit output, every bit depending on every input bit."""
    value = (value + _GOLDEN) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
