"""Request workloads for the load generator: deterministic iterables of ``RequestSpec``.

Each workload is a frozen dataclass with ``generate(num_requests, seed) -> Iterator[RequestSpec]``
(the same arguments give the same requests) and ``settings()`` (what goes into a results file):
- ``SharedPrefixWorkload``: multi-tenant shared prefixes, Zipf tenants, multi-turn sessions;
- ``UniformRandomWorkload``: independent random prompts, uniform lengths;
- ``TraceWorkload``: replay of a JSONL trace.
Prompts are made of ``words.VOCAB`` words, one token each on the sim engine and the tiny vLLM model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from benchmarks.workloads.shared_prefix import SharedPrefixWorkload
from benchmarks.workloads.spec import Message, RequestSpec, render_transcript
from benchmarks.workloads.trace import TraceFormatError, TraceWorkload
from benchmarks.workloads.uniform import UniformRandomWorkload
from benchmarks.workloads.words import TOKENS_PER_WORD, VOCAB, random_words


class Workload(Protocol):
    @property
    def name(self) -> str: ...

    def settings(self) -> dict[str, object]: ...

    def generate(self, num_requests: int, seed: int) -> Iterator[RequestSpec]: ...


__all__ = [
    "TOKENS_PER_WORD",
    "VOCAB",
    "Message",
    "RequestSpec",
    "SharedPrefixWorkload",
    "TraceFormatError",
    "TraceWorkload",
    "UniformRandomWorkload",
    "Workload",
    "random_words",
    "render_transcript",
]
