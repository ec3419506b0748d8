"""Deterministic text for the simulated engine: the next token is a function of the whole context.

The context is the token sequence the engine sees (prompt tokens, then every generated token). Its
state is the CRC-32 of the context text, which is a rolling chain (``crc32(b, crc32(a)) ==
crc32(a + b)``), so extending it by one token is O(1) and a context rebuilt from ``prompt + partial
text`` reaches the very same state as the uninterrupted generation did.

- Words: ``VOCAB`` holds 256 pseudo-words (consonant-vowel-consonant-vowel, e.g. " kelo"), each with a
  leading space and at most ``tokenizer.MAX_TOKEN_CHARS`` characters, so each is exactly one token and
  re-tokenizes to itself. The word is ``VOCAB[mix(state ^ seed) % 256]``; the seed only counts when
  sampling (temperature not 0), as with a real engine.
- End of sequence: the engine counts the *run*, the number of trailing context tokens that are
  vocabulary words, and the *anchor*, the state right after the last token that is not one (for a
  fresh prompt, its last token; for chat, the newline after ``<|im_start|>assistant``). The anchor fixes
  a length ``L`` in ``[EOS_MIN, EOS_MAX]``; EOS comes when the run is a positive multiple of ``L``. Both
  are functions of the context alone, so a resumed generation stops exactly where the uninterrupted
  one would have, and a fresh one ends after ``L`` words (``L + 1`` tokens with the EOS).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

EOS_MIN = 8
EOS_MAX = 64

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _build_vocab() -> tuple[str, ...]:
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words = [" " + a + b for a in syllables for b in syllables]
    # A fixed stride (coprime with len(words)) picks 256 words spread over the whole space.
    return tuple(words[(i * 19) % len(words)] for i in range(256))


VOCAB: tuple[str, ...] = _build_vocab()
VOCAB_INDEX: Mapping[str, int] = MappingProxyType({word: i for i, word in enumerate(VOCAB)})
_SEED_MIX = 0x9E3779B9
_ANCHOR_MIX = 0x5BD1E995


def mix32(value: int) -> int:
    """MurmurHash3's 32-bit finalizer: spreads the CRC's linear structure over all bits."""
    value &= 0xFFFFFFFF
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & 0xFFFFFFFF
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & 0xFFFFFFFF
    value ^= value >> 16
    return value


def eos_length(anchor: int) -> int:
    return EOS_MIN + mix32(anchor ^ _ANCHOR_MIX) % (EOS_MAX - EOS_MIN + 1)


class TextState:
    """The generator's view of one context; ``advance`` it with every token the engine appends."""

    __slots__ = ("anchor", "crc", "run", "seed_mix")

    def __init__(self, crc: int, run: int, anchor: int, seed: int | None = None) -> None:
        self.crc = crc
        self.run = run
        self.anchor = anchor
        self.seed_mix = 0 if seed is None else mix32(seed ^ _SEED_MIX) or 1

    @classmethod
    def from_tokens(cls, tokens: Sequence[str], seed: int | None = None) -> TextState:
        last_other = len(tokens) - 1
        while last_other >= 0 and tokens[last_other] in VOCAB_INDEX:
            last_other -= 1
        anchor = zlib.crc32("".join(tokens[: last_other + 1]).encode())
        crc = zlib.crc32("".join(tokens[last_other + 1 :]).encode(), anchor)
        return cls(crc, len(tokens) - 1 - last_other, anchor, seed)

    def advance(self, token: str) -> None:
        self.crc = zlib.crc32(token.encode(), self.crc)
        if token in VOCAB_INDEX:
            self.run += 1
        else:
            self.run = 0
            self.anchor = self.crc

    def wants_eos(self) -> bool:
        return self.run > 0 and self.run % eos_length(self.anchor) == 0

    def next_word(self) -> str:
        return VOCAB[mix32(self.crc ^ self.seed_mix) & 0xFF]
