"""Uniform random workload: independent prompts of random vocabulary words, input and output
lengths drawn uniformly around a target (as ``vllm bench serve --dataset-name random`` does with
``--random-range-ratio``: lengths in ``[L * (1 - r), L * (1 + r)]``)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from benchmarks.workloads.spec import RequestSpec
from benchmarks.workloads.words import random_words


@dataclass(frozen=True)
class UniformRandomWorkload:
    input_words: int = 256
    output_tokens: int = 128
    range_ratio: float = 0.0
    name: str = "random"

    def __post_init__(self) -> None:
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError("range_ratio must be in [0, 1)")
        if self.input_words < 1 or self.output_tokens < 1:
            raise ValueError("input_words and output_tokens must be at least 1")

    def settings(self) -> dict[str, object]:
        return {"name": self.name, "input_words": self.input_words, "output_tokens": self.output_tokens,
                "range_ratio": self.range_ratio}

    def generate(self, num_requests: int, seed: int) -> Iterator[RequestSpec]:
        rng = random.Random(f"uniform:{seed}")
        for index in range(num_requests):
            words = _draw(rng, self.input_words, self.range_ratio)
            yield RequestSpec(index=index, prompt=random_words(rng, words), prompt_words=words,
                              max_tokens=_draw(rng, self.output_tokens, self.range_ratio))


def _draw(rng: random.Random, target: int, ratio: float) -> int:
    low = max(1, math.floor(target * (1 - ratio)))
    high = max(low, math.ceil(target * (1 + ratio)))
    return rng.randint(low, high)
