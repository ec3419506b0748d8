"""The simulated engine as the HTTP dialects see it: prompts in, token batches out, stats alongside.

It owns the scheduler's loop task. Completion prompts get a BOS token in front (as Llama-family
tokenizers add one); chat prompts are rendered text whose template already marks the turns, so they do
not. A request waits ``frontend_latency`` before it reaches the scheduler, as a real server's HTTP
front end and tokenizer take time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

from backends.sim.profiles import EngineConfig
from backends.sim.request import SamplingParams, SimRequest
from backends.sim.scheduler import Scheduler
from backends.sim.stats import EngineStats
from backends.sim.tokenizer import BOS, tokenize

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic) -> None:
        capacity = (config.num_blocks - 1) * config.block_size
        if config.max_model_len > capacity:
            raise ValueError(
                f"The model's max seq len ({config.max_model_len}) is larger than the maximum number of "
                f"tokens that can be stored in KV cache ({capacity}). Try increasing --num-blocks or "
                f"decreasing --max-model-len.")
        self.config = config
        self.clock = clock
        self.stats = EngineStats(config.max_model_len)
        self.scheduler = Scheduler(config, self.stats, clock)
        self.dead = False
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.scheduler.run(), name="sim-engine-loop")
        self._task.add_done_callback(self._loop_ended)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.dead = True
            log.error("engine loop died", exc_info=task.exception())

    @staticmethod
    def completion_tokens(prompt: str) -> list[str]:
        return [BOS, *tokenize(prompt)]

    @staticmethod
    def chat_tokens(rendered: str) -> list[str]:
        return tokenize(rendered)

    async def submit(self, tokens: list[str], params: SamplingParams) -> SimRequest:
        arrival = self.clock()
        latency = self.config.timing.frontend_latency
        if latency > 0:
            await asyncio.sleep(latency)
        request = SimRequest(f"sim-{next(self._ids)}", tokens, params, arrival)
        self.scheduler.add(request)
        return request

    def abort(self, request: SimRequest) -> None:
        self.scheduler.abort(request)

    @staticmethod
    async def stream(request: SimRequest) -> AsyncIterator[tuple[list[str], bool]]:
        """``(new output tokens, finished)`` after every step that produced some, until the request
        finishes. The finishing batch may be empty (an EOS carries no text)."""
        cursor = 0
        while True:
            # Clear before looking: output produced while the consumer was busy (after the yield)
            # must not be lost by clearing a wake-up that already happened.
            request.wake.clear()
            output = request.output
            if len(output) > cursor or request.finished:
                batch = output[cursor:]
                cursor = len(output)
                done = request.finished
                yield batch, done
                if done:
                    return
                continue
            await request.wake.wait()

    def state(self) -> dict[str, object]:
        """A JSON-able snapshot for ``GET /sim/state`` (tests and debugging)."""
        cache = self.scheduler.cache
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_cache_usage": cache.usage,
            "free_blocks": cache.num_free,
            "cached_blocks": cache.num_cached,
            "num_blocks": cache.num_blocks,
            "block_size": cache.block_size,
            "evictions": cache.evictions,
            "preemptions": self.stats.preemptions,
            "steps": self.scheduler.steps,
            "prefix_cache_queries": self.stats.prefix_queries,
            "prefix_cache_hits": self.stats.prefix_hits,
            "dead": self.dead,
        }
