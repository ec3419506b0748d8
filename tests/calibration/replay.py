"""A prefix-cache trace defined in KV blocks, replayed against any vLLM-compatible server.

Tokens differ between engines (the simulator's tokenizer is not the tiny model's BPE), so the trace is
defined in 128-token blocks: a request is a run of named *segments* (``("A", 8)``: the first 8 blocks of
content ``A``; the same name always gives the same words, so ``("A", 4)`` is a prefix of ``("A", 8)``)
followed by ``tail`` tokens of its own. Prompts are built from words that are exactly one token in both
tokenizers (a short common word with its leading space: ``" the"``, ``" data"``...), so a prompt of
``n`` words is ``n`` tokens plus whatever the engine adds in front: the simulator prepends BOS, the
tiny model's tokenizer adds nothing. ``lead_tokens`` measures that once per engine (``POST /tokenize``)
and the engine's prompt drops that many leading words, so both engines see prompts of exactly the
trace's token count with block boundaries in the same places. ``replay`` checks every prompt's count
with ``/tokenize`` before sending it.

Requests are sent one at a time (the cache state then depends on the order only, so both engines must
agree exactly), and the per-request ``usage.prompt_tokens_details.cached_tokens`` plus the deltas of
``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` are collected.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from backends.sim.engine import Engine
from backends.sim.profiles import EngineConfig
from backends.sim.request import SamplingParams, SimRequest
from backends.sim.scheduler import Scheduler
from backends.sim.stats import EngineStats

BLOCK = 128
# The engines the trace is made for: 64 blocks of 128 tokens, 2 sequences, 2048-token context.
NUM_BLOCKS = 64
MAX_NUM_SEQS = 2
MAX_MODEL_LEN = 2048
SIM_ARGS = ("--profile", "vllm-cpu", "--block-size", str(BLOCK), "--num-blocks", str(NUM_BLOCKS),
            "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", str(MAX_MODEL_LEN))
# Short common words that the tiny model's BPE and the simulator's tokenizer both keep as one token
# when preceded by a space (checked per prompt at replay time).
WORDS = tuple(
    "the a an of to and in is it that for on with as was be by this are or from at not but have you your "
    "we they he she what when who how why can will may one two four five tell me data test time user".split())


@dataclass(frozen=True)
class TraceRequest:
    segments: tuple[tuple[str, int], ...]
    tail: int = 0
    tail_name: str = ""  # empty: content of its own; the same name repeats the same tail words
    max_tokens: int = 1

    @property
    def num_tokens(self) -> int:
        return sum(blocks for _, blocks in self.segments) * BLOCK + self.tail

    def label(self) -> str:
        parts = [f"{name}{blocks}" for name, blocks in self.segments]
        if self.tail:
            parts.append(f"t{self.tail}" + (f"={self.tail_name}" if self.tail_name else ""))
        return "+".join(parts) + (f" gen{self.max_tokens}" if self.max_tokens != 1 else "")

    def words(self, index: int, salt: str) -> list[str]:
        out: list[str] = []
        for name, blocks in self.segments:
            out.extend(_content(salt + name, blocks * BLOCK))
        out.extend(_content(salt + (self.tail_name or f"tail-{index}"), self.tail))
        return out


def _content(name: str, count: int) -> list[str]:
    rng = random.Random(f"calibration-{name}")  # str seeds are stable across runs and processes
    return [rng.choice(WORDS) for _ in range(count)]


def req(*segments: tuple[str, int], tail: int = 0, same_tail_as: str = "",
        max_tokens: int = 1) -> TraceRequest:
    return TraceRequest(tuple(segments), tail, same_tail_as, max_tokens)


# For a cache of 64 blocks (63 usable: block 0 is the null block in both engines) and 2048-token prompts
# at most. Prefixes of 2 to 15 blocks, exact repeats (with and without a partial last block: a prompt
# of whole blocks recomputes its last block), decodes that fill a block, then waves of 10-15 block
# prompts that evict in LRU order, tails first, leaving partial hits behind.
TRACE: tuple[TraceRequest, ...] = (
    # shared prefixes of several lengths, repeats
    req(("A", 4), ("x1", 1), tail=10),
    req(("A", 4), ("x2", 1), tail=20),
    req(("A", 2), tail=5),
    req(("A", 8)),
    req(("A", 8)),
    req(("B", 6), tail=50, same_tail_as="b"),
    req(("B", 6), tail=50, same_tail_as="b"),
    req(("C", 12), tail=1),
    req(("A", 8), ("y", 2), tail=3),
    req(("B", 3), ("z", 1), tail=64),
    req(("S", 1), tail=125, max_tokens=8),
    # heavy pressure: each prompt is a quarter of the cache
    req(("D", 15), tail=9),
    req(("E", 15), tail=9),
    req(("A", 8), tail=30),
    req(("F", 15), tail=9),
    req(("C", 12), tail=2),
    req(("B", 6), tail=50, same_tail_as="b"),
    req(("G", 15), tail=100),
    req(("D", 15), tail=10),
    req(("A", 4), ("x1", 1), tail=11),
    req(("E", 10)),
    req(("H", 14), tail=127, max_tokens=3),
    req(("C", 6), tail=7),
    req(("A", 8), ("y", 2), tail=4),
    req(("F", 15), tail=9),
    req(("D", 8), tail=1),
    req(("B", 6), tail=50, same_tail_as="b"),
    req(("G", 15), tail=100),
    req(("A", 2), tail=6),
    req(("S", 1), tail=125),
    # a working set just under the capacity, then one over it
    req(("J", 10), tail=20),
    req(("K", 10), tail=20),
    req(("L", 10), tail=20),
    req(("M", 10), tail=20),
    req(("N", 10), tail=20),
    req(("Q", 12), tail=5),
    req(("J", 10), tail=60),
    req(("R", 9), tail=1),
    req(("K", 10), tail=5),
    req(("L", 10), tail=5),
    req(("M", 5), ("m", 3), tail=9),
    req(("T", 7), tail=127, max_tokens=2),
    req(("N", 10)),
    req(("Q", 12), tail=6),
    req(("J", 4), tail=2),
    req(("P", 15)),
    req(("L", 10), tail=5),
    req(("M", 5), ("m", 3), tail=9),
)


@dataclass
class ReplayResult:
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)
    queries: float = 0.0
    hits: float = 0.0

    @property
    def cached_blocks(self) -> list[int]:
        return [cached // BLOCK for cached in self.cached_tokens]

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def metric(text: str, name: str) -> float:
    """Sum of one Prometheus sample family over its label sets."""
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    if not values:
        raise KeyError(name)
    return sum(float(value) for value in values)


def cache_config(text: str) -> dict[str, str]:
    found = re.search(r"^vllm:cache_config_info\{([^}]*)\}", text, re.M)
    if found is None:
        raise KeyError("vllm:cache_config_info")
    return dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))


def count_tokens(client: httpx.Client, url: str, model: str, prompt: str) -> int:
    response = client.post(f"{url}/tokenize", json={"model": model, "prompt": prompt})
    response.raise_for_status()
    return int(response.json()["count"])


def lead_tokens(client: httpx.Client, url: str, model: str) -> int:
    """Tokens the engine adds in front of a completion prompt (BOS or nothing)."""
    return count_tokens(client, url, model, " " + WORDS[0]) - 1


def replay(url: str, model: str, trace: Sequence[TraceRequest], salt: str = "",
           timeout_s: float = 120.0) -> ReplayResult:
    """Send ``trace`` in order. ``salt`` changes every word: content an engine cached before (an earlier
    replay) then never matches, and counts as free blocks like never-used ones."""
    result = ReplayResult()
    with httpx.Client(timeout=timeout_s) as client:
        lead = lead_tokens(client, url, model)
        before = client.get(f"{url}/metrics").text
        for index, request in enumerate(trace):
            prompt = "".join(" " + word for word in request.words(index, salt)[lead:])
            counted = count_tokens(client, url, model, prompt)
            if counted != request.num_tokens:
                raise AssertionError(f"request {index} ({request.label()}): {counted} tokens on {url}, "
                                     f"the trace needs {request.num_tokens}")
            response = client.post(f"{url}/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": request.max_tokens, "ignore_eos": True,
                "temperature": 0})
            response.raise_for_status()
            usage = response.json()["usage"]
            result.prompt_tokens.append(usage["prompt_tokens"])
            result.cached_tokens.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        after = client.get(f"{url}/metrics").text
    queries, hits = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
    result.queries = metric(after, queries) - metric(before, queries)
    result.hits = metric(after, hits) - metric(before, hits)
    return result


def replay_in_process(trace: Sequence[TraceRequest], config: EngineConfig) -> tuple[list[int], int, int]:
    """The trace through the simulator's own scheduler (no HTTP, no clock): cached blocks per request,
    prefix-cache hit tokens and evictions."""
    scheduler = Scheduler(config, EngineStats(config.max_model_len), clock=lambda: 0.0)
    lead = len(Engine.completion_tokens(" " + WORDS[0])) - 1
    cached: list[int] = []
    for index, request in enumerate(trace):
        tokens = Engine.completion_tokens("".join(" " + word for word in request.words(index, "")[lead:]))
        if len(tokens) != request.num_tokens:
            raise AssertionError(f"request {index}: {len(tokens)} sim tokens, not {request.num_tokens}")
        sim = SimRequest(f"trace-{index}", tokens,
                         SamplingParams(max_tokens=request.max_tokens, ignore_eos=True), 0.0)
        scheduler.add(sim)
        while not sim.finished:
            scheduler.complete(scheduler.schedule())
        cached.append((sim.cached_tokens or 0) // config.block_size)
    return cached, scheduler.stats.prefix_hits, scheduler.cache.evictions
