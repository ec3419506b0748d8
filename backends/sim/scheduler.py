"""Continuous batching for the simulated engine, shaped after vLLM's v1 scheduler.

Each step (``schedule``, then the step's time passes, then ``complete``):
1. Running requests first, in admission order, within the token budget (``max_num_batched_tokens``):
   a decoding request needs one token, a request still in (chunked) prefill the rest of its prompt.
   When the cache cannot give a running request the block it needs, the newest running request is
   preempted (recompute: its blocks are released, it goes back to the head of the waiting queue).
2. Then, unless something was preempted, waiting requests in FIFO order while fewer than
   ``max_num_seqs`` run and budget is left: the prefix cache is consulted (whole blocks within all but
   the last prompt token, vLLM's rule), hit blocks are shared, blocks for the scheduled chunk are
   allocated; when they cannot be, admission stops (head-of-line, like vLLM).
3. The step lasts ``TimingModel.step_time`` of what was scheduled; afterwards every request whose
   context is fully computed gets one new token (the first one right after its prefill).

Full blocks are registered in the cache as soon as they are allocated for computed tokens, so requests
scheduled later can hit them. The scheduler never blocks: ``run`` is the only coroutine, the rest is
synchronous so tests can drive steps with a virtual clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from backends.sim.kv_cache import KVCache, block_hashes
from backends.sim.profiles import EngineConfig
from backends.sim.request import RequestStatus, SimRequest
from backends.sim.stats import EngineStats

# Steps are paced on a fixed timeline: time lost to oversleeping or to the simulator's own work between
# steps (emitting tokens, writing streams) is paid back by the next steps, up to this much, so the
# modelled rates hold on average; beyond it (a starved process) the timeline restarts from now.
_MAX_TIME_DEBT = 0.1


@dataclass
class Step:
    scheduled: list[tuple[SimRequest, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0
    duration: float = 0.0


class Scheduler:
    def __init__(self, config: EngineConfig, stats: EngineStats,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.stats = stats
        self.clock = clock
        self.cache = KVCache(config.num_blocks, config.block_size)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0
        self._work = asyncio.Event()

    # -- requests in and out ------------------------------------------------------------------------

    def add(self, request: SimRequest) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        self._work.set()

    def abort(self, request: SimRequest) -> None:
        if request.finished:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self._finish(request, "abort", self.clock())

    def max_batch_tokens(self) -> int:
        """Tokens the running batch may grow to (TGI's ``batch_current_max_tokens``)."""
        return sum(r.num_prompt_tokens + r.params.max_tokens for r in self.running)

    # -- one step -----------------------------------------------------------------------------------

    def schedule(self) -> Step:
        step = Step()
        budget = self.config.max_num_batched_tokens
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            count = min(request.num_tokens - request.num_computed, budget)
            while not self._allocate(request, request.num_computed + count):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                break
            self._add_to_step(step, request, count)
            budget -= count
            index += 1
        if not preempted:
            budget = self._admit(step, budget)
        step.duration = self.config.timing.step_time(step.prefill_tokens, step.decode_seqs,
                                                     step.decode_context_tokens)
        return step

    def complete(self, step: Step) -> None:
        now = self.clock()
        self.steps += 1
        if step.prefill_tokens:
            self.stats.steps_prefill += 1
            self.stats.step_prefill.observe(step.duration)
        if step.decode_seqs:
            self.stats.steps_decode += 1
            self.stats.step_decode.observe(step.duration)
        if step.scheduled:
            self.stats.batch_size.observe(len(step.scheduled))
        finished = False
        for request, count in step.scheduled:
            if request.status is not RequestStatus.RUNNING:
                continue  # aborted during the step
            request.num_computed += count
            if request.num_computed >= request.num_tokens:
                self._emit_token(request, now)
                finished = finished or request.finished
        if finished:
            self.running = [r for r in self.running if not r.finished]

    async def run(self) -> None:
        """The engine loop: one step after another while there is work, idle otherwise."""
        deadline = self.clock()
        while True:
            if not self.running and not self.waiting:
                self._work.clear()
                await self._work.wait()
                deadline = self.clock()
                continue
            now = self.clock()
            start = deadline if now - deadline < _MAX_TIME_DEBT else now
            step = self.schedule()
            deadline = start + step.duration
            await asyncio.sleep(max(deadline - self.clock(), 0.0))
            self.complete(step)

    # -- internals ----------------------------------------------------------------------------------

    def _add_to_step(self, step: Step, request: SimRequest, count: int) -> None:
        step.scheduled.append((request, count))
        decoding = count == 1 and request.num_output_tokens > 0 and \
            request.num_computed == request.num_tokens - 1
        if decoding:
            step.decode_seqs += 1
            step.decode_context_tokens += request.num_tokens
        else:
            step.prefill_tokens += count

    def _admit(self, step: Step, budget: int) -> int:
        block_size = self.config.block_size
        while self.waiting and len(self.running) < self.config.max_num_seqs and budget > 0:
            request = self.waiting[0]
            limit = request.num_tokens - 1
            self._hash_blocks(request, limit)
            hits = self.cache.match_prefix(request.block_hashes[: limit // block_size])
            hit_tokens = len(hits) * block_size
            count = min(request.num_tokens - hit_tokens, budget)
            needed = -(-(hit_tokens + count) // block_size) - len(hits)
            if needed > self.cache.free_after_touch(hits):
                break
            self.waiting.popleft()
            self.cache.touch(hits)
            request.blocks = list(hits)
            request.registered_blocks = len(hits)
            request.num_computed = hit_tokens
            self.stats.prefix_queries += request.num_tokens
            self.stats.prefix_hits += hit_tokens
            if request.cached_tokens is None:
                request.cached_tokens = hit_tokens
            if not self._allocate(request, hit_tokens + count):  # pragma: no cover - checked above
                raise RuntimeError("block accounting out of sync")
            request.status = RequestStatus.RUNNING
            if request.first_scheduled is None:
                request.first_scheduled = self.clock()
            self.running.append(request)
            self._add_to_step(step, request, count)
            budget -= count
        return budget

    def _hash_blocks(self, request: SimRequest, limit_tokens: int) -> None:
        done = len(request.block_hashes)
        if (done + 1) * self.config.block_size <= limit_tokens:
            parent = request.block_hashes[-1] if done else b""
            request.block_hashes.extend(
                block_hashes(request.tokens, self.config.block_size, parent, done, limit_tokens))

    def _allocate(self, request: SimRequest, total_tokens: int) -> bool:
        """Blocks for the first ``total_tokens`` tokens; registers the ones that are full."""
        block_size = self.config.block_size
        needed = -(-total_tokens // block_size) - len(request.blocks)
        if needed > 0:
            fresh = self.cache.allocate(needed)
            if fresh is None:
                return False
            request.blocks.extend(fresh)
        full = total_tokens // block_size
        if full > request.registered_blocks:
            self._hash_blocks(request, total_tokens)
            for index in range(request.registered_blocks, full):
                self.cache.register(request.blocks[index], request.block_hashes[index])
            request.registered_blocks = full
        return True

    def _preempt(self, request: SimRequest) -> None:
        self.cache.release(request.blocks)
        request.blocks = []
        request.registered_blocks = 0
        request.num_computed = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.stats.preemptions += 1

    def _emit_token(self, request: SimRequest, now: float) -> None:
        params = request.params
        stats = self.stats
        if request.first_token_at is None:
            request.first_token_at = now
            stats.ttft.observe(now - request.arrival)
            stats.prompt_tokens += request.num_prompt_tokens
            stats.prompt_tokens_cached += request.cached_tokens or 0
        else:
            stats.itl.observe(now - (request.last_token_at or now))
        request.last_token_at = now
        request.num_output_tokens += 1
        stats.generation_tokens += 1
        text = request.text
        if not params.ignore_eos and text.wants_eos():
            request.eos = True
            self._finish(request, "stop", now)
            if request.sink is not None:
                request.sink([], True)
            return
        word = text.next_word()
        text.advance(word)
        request.tokens.append(word)
        request.output.append(word)
        request.output_chars += len(word)
        if params.stop and self._hit_stop(request, word):
            self._finish(request, "stop", now)
        elif (request.num_output_tokens >= params.max_tokens
              or request.num_tokens >= self.config.max_model_len):
            self._finish(request, "length", now)
        if request.sink is not None:
            request.sink([word], request.finished)
        elif not request.finished:
            request.wake.set()

    @staticmethod
    def _hit_stop(request: SimRequest, word: str) -> bool:
        """vLLM's stop strings: the earliest match in the new text ends the output before (or after,
        with ``include_stop_str_in_output``) the stop string."""
        longest = max(len(stop) for stop in request.params.stop)
        window = "".join(request.output[-(longest + 1):])
        window_start = request.output_chars - len(window)
        search_from = max(0, len(window) - len(word) - longest + 1)
        best: tuple[int, str] | None = None
        for stop in request.params.stop:
            found = window.find(stop, search_from)
            if found >= 0 and (best is None or found < best[0]):
                best = (found, stop)
        if best is None:
            return False
        position, stop = best
        request.stop_reason = stop
        keep = position + (len(stop) if request.params.include_stop_str_in_output else 0)
        request.visible_chars = window_start + keep
        return True

    def _finish(self, request: SimRequest, reason: str, now: float) -> None:
        request.finish_reason = reason
        request.status = RequestStatus.FINISHED
        request.finished_at = now
        self.cache.release(request.blocks)
        request.blocks = []
        stats = self.stats
        stats.count_finished(reason)
        stats.e2e.observe(now - request.arrival)
        stats.request_max_tokens.observe(request.params.max_tokens)
        if request.first_scheduled is not None:
            stats.queue.observe(request.first_scheduled - request.arrival)
        if request.first_token_at is not None and request.first_scheduled is not None:
            stats.prefill.observe(request.first_token_at - request.first_scheduled)
            stats.decode.observe(now - request.first_token_at)
            stats.request_prompt_tokens.observe(request.num_prompt_tokens)
            stats.request_generation_tokens.observe(request.num_output_tokens)
            if request.num_output_tokens > 1:
                stats.tpot.observe((now - request.first_token_at) / (request.num_output_tokens - 1))
        request.wake.set()
