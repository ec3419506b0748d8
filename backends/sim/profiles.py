"""Engine geometry and timing presets for the simulated engine (``--profile``).

One engine step costs

    step_overhead + prefill_per_token * uncached prompt tokens scheduled
                  + decode_per_seq * sequences decoding + decode_per_context_token * their context

Cached prompt tokens are never scheduled, so they are free, as with vLLM's prefix caching; the decode
step grows with batch size and, mildly, with the context the batch attends to. ``frontend_latency``
is spent once per request before it reaches the scheduler (HTTP parsing, tokenizing, detokenizing).

Presets:
- ``instant`` (default): no time at all; for functional tests and the embedded backend.
- ``fast``: about 1 ms per step, so that queueing, streaming and cancellation are observable in tests
  without slowing them down.
- ``vllm-cpu``: the real vLLM 0.32 CPU server of reference/vllm.md (tiny 2-layer Llama, 128-token
  blocks, 256 blocks, ``--max-num-seqs 8``; vLLM's CPU default of 2048 batched tokens). Calibrated on
  this machine by ``benchmarks/vllm_cpu_profile.py``, figures from its
  ``benchmarks/results/vllm_cpu_profile.json`` (``fit``; they move by about 10% with the shared load):
  a decode step takes ``decode_step_base_s`` 5.43 ms + ``decode_step_s_per_seq`` 0.82 ms per sequence
  (``step_overhead``, ``decode_per_seq``); a prefill costs ``sim_prefill_s_per_uncached_token``
  0.448 ms per uncached token; a fully cached prompt's TTFT (one token computed) is
  ``sim_overhead_s`` 16.4 ms, i.e. 5.43 ms of step + 0.45 ms of that token + 10.55 ms spent outside
  the engine (HTTP, tokenizer, engine-core IPC), of which the simulator's own request handling and
  timer overshoot take about 3.5 ms under the usual load (sim_vs_vllm: cached TTFT 15.9-17.7 ms for a
  modelled 12.9 ms), so ``frontend_latency`` is 7 ms. Cached tokens are free here: the measured
  ~0.005 ms per cached token (``joint_s_per_cached_token``) is within the noise of the warm points
  (at most ~8 ms at 1,536 cached tokens, against a 14-23 ms spread). Long-context decode was not
  measured (contexts under 100 tokens), so ``decode_per_context_token`` stays 0. Checked against the
  real server's curves by ``benchmarks/sim_vs_vllm.py`` (results/sim_vs_vllm.json).
- ``gpu-8b``: loosely a Llama-3/3.1-8B in BF16 under vLLM on one H100-80GB, from public benchmark
  write-ups (vLLM v0.6 performance blog, Lambda and Ori vLLM benchmarks of Llama-3.1-8B on H100):
  single-stream decode about 7 ms per token, prefill 10-20k tokens/s (here about 16k), a decode step
  of about 10 ms at batch 32 with 1k-token contexts; KV cache of 128 KiB per token and ~56 GB free at
  0.9 memory utilisation, i.e. about 450k tokens = 28,000 blocks of 16. Approximate, not measured here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType


@dataclass(frozen=True)
class TimingModel:
    step_overhead: float = 0.0
    prefill_per_token: float = 0.0
    decode_per_seq: float = 0.0
    decode_per_context_token: float = 0.0
    frontend_latency: float = 0.0

    def step_time(self, prefill_tokens: int, decode_seqs: int, decode_context_tokens: int) -> float:
        if prefill_tokens == 0 and decode_seqs == 0:
            return 0.0
        return (self.step_overhead + self.prefill_per_token * prefill_tokens
                + self.decode_per_seq * decode_seqs + self.decode_per_context_token * decode_context_tokens)


@dataclass(frozen=True)
class EngineConfig:
    """Everything that shapes the engine; CLI flags override a profile's values field by field."""

    block_size: int = 16
    num_blocks: int = 4096
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    timing: TimingModel = TimingModel()

    def with_overrides(self, **changes: object) -> EngineConfig:
        timing_fields = {key: value for key, value in changes.items()
                         if key in TimingModel.__dataclass_fields__ and value is not None}
        own = {key: value for key, value in changes.items()
               if key in EngineConfig.__dataclass_fields__ and value is not None}
        config = replace(self, **own)  # type: ignore[arg-type]
        if timing_fields:
            config = replace(config, timing=replace(config.timing, **timing_fields))  # type: ignore[arg-type]
        return config


PROFILES: Mapping[str, EngineConfig] = MappingProxyType({
    "instant": EngineConfig(),
    "fast": EngineConfig(timing=TimingModel(step_overhead=0.001, prefill_per_token=2e-6,
                                            decode_per_seq=2e-5)),
    "vllm-cpu": EngineConfig(
        block_size=128, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=2048,
        timing=TimingModel(step_overhead=0.00543, prefill_per_token=0.000448, decode_per_seq=0.00082,
                           frontend_latency=0.007)),
    "gpu-8b": EngineConfig(
        block_size=16, num_blocks=28000, max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=8192,
        timing=TimingModel(step_overhead=0.0065, prefill_per_token=0.00006, decode_per_seq=0.00008,
                           decode_per_context_token=4e-8, frontend_latency=0.002)),
})
DEFAULT_PROFILE = "instant"
