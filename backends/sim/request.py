"""One request inside the simulated engine: its sampling parameters, token context and progress.

The scheduler owns the fields below ``status``; HTTP handlers either read ``output`` (generated token
texts, EOS excluded) from their own cursor and wait on ``wake`` between engine steps, or set ``sink`` to
be handed each new token as the step produces it; ``finish_reason`` is set once it is over.
``num_output_tokens`` counts the EOS token too, as engines do in usage.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

from backends.sim.textgen import TextState


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    seed: int | None = None
    temperature: float | None = None

    def text_seed(self) -> int | None:
        """The seed only changes the text when sampling; greedy decoding ignores it."""
        return None if self.temperature == 0 else self.seed


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class SimRequest:
    def __init__(self, request_id: str, prompt_tokens: list[str], params: SamplingParams,
                 arrival: float) -> None:
        self.request_id = request_id
        self.params = params
        self.tokens = list(prompt_tokens)
        self.num_prompt_tokens = len(prompt_tokens)
        self.text = TextState.from_tokens(prompt_tokens, params.text_seed())
        self.output: list[str] = []
        self.output_chars = 0
        self.num_output_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.eos = False
        # Characters of the output text the client may see (vLLM cuts at a stop string).
        self.visible_chars: int | None = None
        self.wake = asyncio.Event()
        # Set by a streaming handler: called with (new tokens, finished) from inside the engine step,
        # instead of waking the handler for every token.
        self.sink: Callable[[list[str], bool], None] | None = None

        self.status = RequestStatus.WAITING
        self.block_hashes: list[bytes] = []
        self.blocks: list[int] = []
        self.registered_blocks = 0
        self.num_computed = 0
        self.cached_tokens: int | None = None
        self.num_preemptions = 0
        self.arrival = arrival
        self.first_scheduled: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finished_at: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def output_text(self) -> str:
        text = "".join(self.output)
        return text if self.visible_chars is None else text[: self.visible_chars]
