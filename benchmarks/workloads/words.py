"""Prompt text with a predictable token count: words from a fixed vocabulary of short English words.

Every word of ``VOCAB`` is exactly one token, with or without a leading space, for both engines this
project benchmarks:
- the simulated engine (``backends/sim/tokenizer.py``): a word of letters with its leading space is
  one piece, and pieces of at most 5 characters are one token, so words have at most 4 letters;
- the real vLLM tiny model's byte-level BPE (``scripts/build_tiny_model.py``, vocabulary 2,048, trained
  on text rich in these words): verified with its ``tokenizer.json`` (``" ".join`` of 10, 100 and
  2,048 random ``VOCAB`` words gives exactly 10, 100 and 2,048 tokens, and no BOS is added).
So ``words(n)`` joined by spaces is ``n`` tokens on both. Real-world tokenizers (Llama 3, GPT-4o)
also encode these common words as one token each. Workloads are parameterized in words and the load
generator reports the engine's own ``usage.prompt_tokens``; engines and templates add a few tokens
on top: the sim engine's BOS on completions prompts, the chat template's role markers, the
transcript's ``User:``/``Assistant:`` (a shared-prefix request over completions on the sim: words + 9).
"""

from __future__ import annotations

import random

VOCAB: tuple[str, ...] = (
    "the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was",
    "be", "by", "this", "are", "or", "from", "at", "not", "but", "have", "you", "your", "we", "they",
    "he", "she", "what", "when", "who", "how", "why", "can", "will", "may", "one", "two", "four",
    "five", "tell", "me", "time", "data", "test",
)
TOKENS_PER_WORD = 1.0


def random_words(rng: random.Random, count: int) -> str:
    """``count`` vocabulary words drawn uniformly, joined by single spaces (no leading space)."""
    return " ".join(rng.choices(VOCAB, k=count))
