"""The simulated engine's tokenizer: a deterministic, dependency-free approximation of a BPE tokenizer.

Text is cut into pieces the way GPT-2/Llama-3 pre-tokenizers do (special tokens; a word with its leading
space; groups of up to 3 digits; punctuation runs; whitespace, keeping the last space for the next word),
and every piece longer than ``MAX_TOKEN_CHARS`` characters is split into chunks of that size. English
prose comes out at about 4 characters per token, close to real tokenizers.

The one property the engine relies on: cutting happens only at piece boundaries, and every word the
text generator emits (a vocabulary word with a leading space, at most ``MAX_TOKEN_CHARS`` characters) is
a piece of its own, so ``tokenize(prompt + generated_text) == tokenize(prompt) + generated_tokens``. A
generation resumed from ``prompt + partial text`` therefore sees exactly the same token context.

Token ids exist only for the wire (``/tokenize``, TGI token events): specials and vocabulary words have
small fixed ids, any other token a stable CRC-derived id below ``VOCAB_SIZE``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

MAX_TOKEN_CHARS = 5
VOCAB_SIZE = 32000

BOS = "<s>"
EOS = "</s>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, IM_START, IM_END)
SPECIAL_IDS: Mapping[str, int] = MappingProxyType({token: i + 1 for i, token in enumerate(SPECIAL_TOKENS)})
EOS_ID = SPECIAL_IDS[EOS]
# Ids of the text generator's vocabulary start here (see textgen.VOCAB); other tokens start at _HASHED_BASE.
VOCAB_ID_BASE = 16
_HASHED_BASE = 1024

_SPECIALS = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")
_PIECE = re.compile(
    r" ?[^\W\d_]+"  # a word (letters) with an optional leading space
    r"| ?\d{1,3}"  # up to three digits
    r"| ?(?:[^\s\w]|_)+"  # punctuation / symbols
    r"|\s+(?!\S)"  # whitespace not followed by a word: leaves the last space to the next piece
    r"|\s+"
)


def tokenize(text: str) -> list[str]:
    """Cut ``text`` into token strings; ``"".join(tokenize(t)) == t`` always holds.

    Special tokens are split out first (as Hugging Face tokenizers do), then each stretch between them
    is pre-tokenized and long pieces are chunked."""
    tokens: list[str] = []
    append = tokens.append
    for index, segment in enumerate(_SPECIALS.split(text)):
        if index % 2:
            append(segment)
            continue
        for piece in _PIECE.findall(segment):
            if len(piece) <= MAX_TOKEN_CHARS:
                append(piece)
            else:
                tokens.extend(piece[i : i + MAX_TOKEN_CHARS] for i in range(0, len(piece), MAX_TOKEN_CHARS))
    return tokens


def detokenize(tokens: Sequence[str]) -> str:
    return "".join(tokens)


def token_id(token: str, vocab_index: Mapping[str, int]) -> int:
    """The wire id of ``token``: fixed for specials and vocabulary words, CRC-derived otherwise."""
    special = SPECIAL_IDS.get(token)
    if special is not None:
        return special
    index = vocab_index.get(token)
    if index is not None:
        return VOCAB_ID_BASE + index
    return _HASHED_BASE + zlib.crc32(token.encode()) % (VOCAB_SIZE - _HASHED_BASE)


def is_special(token: str) -> bool:
    return token in SPECIAL_IDS


def offsets(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character ``(start, stop)`` of every token in the text it came from."""
    spans: list[tuple[int, int]] = []
    position = 0
    for token in tokens:
        spans.append((position, position + len(token)))
        position += len(token)
    return spans
