"""The sim's continuous-batching scheduler, driven step by step on a virtual clock."""

from __future__ import annotations

from backends.sim.engine import Engine
from backends.sim.profiles import EngineConfig, TimingModel
from backends.sim.request import SamplingParams, SimRequest
from backends.sim.scheduler import Scheduler, Step
from backends.sim.stats import EngineStats

TIMING = TimingModel(step_overhead=0.001, prefill_per_token=0.001, decode_per_seq=0.0001)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(**overrides: object) -> tuple[Scheduler, Clock]:
    config = EngineConfig(block_size=16, num_blocks=200, max_num_seqs=8, max_num_batched_tokens=4096,
                          max_model_len=2048, timing=TIMING).with_overrides(**overrides)
    clock = Clock()
    return Scheduler(config, EngineStats(config.max_model_len), clock), clock


def prompt(n_words: int, tag: str = "w") -> list[str]:
    """A completion prompt of exactly ``n_words + 1`` tokens (BOS + one-token words)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = Engine.completion_tokens("".join(f" {tag}{letters[i // 26 % 26]}{letters[i % 26]}"
                                              for i in range(n_words)))
    assert len(tokens) == n_words + 1
    return tokens


def submit(scheduler: Scheduler, tokens: list[str], max_tokens: int = 4, **params: object) -> SimRequest:
    request = SimRequest(f"r{len(tokens)}", tokens,
                         SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params),  # type: ignore[arg-type]
                         scheduler.clock())
    scheduler.add(request)
    return request


def step(scheduler: Scheduler, clock: Clock) -> Step:
    planned = scheduler.schedule()
    clock.now += planned.duration
    scheduler.complete(planned)
    return planned


def run(scheduler: Scheduler, clock: Clock, *requests: SimRequest, limit: int = 10_000) -> None:
    for _ in range(limit):
        if all(r.finished for r in requests):
            return
        step(scheduler, clock)
    raise AssertionError("requests did not finish")


def ttft(request: SimRequest) -> float:
    assert request.first_token_at is not None
    return request.first_token_at - request.arrival


def test_queueing_at_max_num_seqs_shows_in_running_and_waiting() -> None:
    scheduler, clock = make(max_num_seqs=2)
    requests = [submit(scheduler, prompt(10, "q" + "abcd"[i]), max_tokens=3) for i in range(4)]
    step(scheduler, clock)
    assert (len(scheduler.running), len(scheduler.waiting)) == (2, 2)
    assert requests[2].first_scheduled is None
    run(scheduler, clock, requests[0], requests[1])
    step(scheduler, clock)
    assert (len(scheduler.running), len(scheduler.waiting)) == (2, 0)
    run(scheduler, clock, *requests)
    assert (len(scheduler.running), len(scheduler.waiting)) == (0, 0)
    assert requests[2].first_scheduled is not None and requests[2].first_scheduled > requests[2].arrival
    assert scheduler.cache.num_free == scheduler.cache.num_blocks - 1


def test_ttft_grows_with_uncached_prompt_length_not_with_cached_length() -> None:
    scheduler, clock = make()
    short = submit(scheduler, prompt(100, "s"))
    run(scheduler, clock, short)
    long = submit(scheduler, prompt(400, "l"))
    run(scheduler, clock, long)
    assert ttft(long) > ttft(short) * 3
    # The same 400-token prefix again, then an 800-token one sharing it: both nearly free.
    warm = [*prompt(400, "l"), " new", " tail"]
    again = submit(scheduler, warm)
    run(scheduler, clock, again)
    assert again.cached_tokens == 400 // 16 * 16
    assert ttft(again) < ttft(short) / 3
    longer = submit(scheduler, [*prompt(400, "l"), *[f" x{i}" for i in range(400)]])
    run(scheduler, clock, longer)
    longer_again = submit(scheduler, [*prompt(400, "l"), *[f" x{i}" for i in range(400)], " end"])
    run(scheduler, clock, longer_again)
    assert abs(ttft(longer_again) - ttft(again)) < 0.02


def test_cached_tokens_are_whole_blocks_and_never_the_last_prompt_token() -> None:
    scheduler, clock = make()
    tokens = prompt(31)  # 32 tokens = exactly two blocks
    first = submit(scheduler, tokens)
    run(scheduler, clock, first)
    second = submit(scheduler, list(tokens))
    run(scheduler, clock, second)
    assert first.cached_tokens == 0
    assert second.cached_tokens == 16  # the last token is recomputed, so the second block cannot hit
    third = submit(scheduler, [*tokens, " more"])
    run(scheduler, clock, third)
    assert third.cached_tokens == 32
    assert scheduler.stats.prefix_hits == 48 and scheduler.stats.prefix_queries == 32 + 32 + 33


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    scheduler, clock = make(max_num_batched_tokens=64)
    request = submit(scheduler, prompt(199))
    steps = 0
    while request.first_token_at is None:
        planned = step(scheduler, clock)
        assert planned.prefill_tokens <= 64
        steps += 1
    assert steps == 4


def test_decode_steps_get_slower_with_batch_size() -> None:
    scheduler, clock = make()
    alone = submit(scheduler, prompt(8, "a"), max_tokens=20)
    step(scheduler, clock)
    single = step(scheduler, clock)
    batch = [submit(scheduler, prompt(8, "b" + "abcdef"[i]), max_tokens=20) for i in range(6)]
    step(scheduler, clock)
    crowded = step(scheduler, clock)
    assert single.decode_seqs == 1 and crowded.decode_seqs == 7
    assert crowded.duration > single.duration
    run(scheduler, clock, alone, *batch)


def test_preemption_recomputes_the_newest_request_and_keeps_its_text() -> None:
    alone, clock = make()
    reference = submit(alone, prompt(30, "pa"), max_tokens=40)
    run(alone, clock, reference)

    # 7 usable blocks of 16: two 31-token prompts fit (2 blocks each), their growth to 71 tokens does not.
    scheduler, clock = make(num_blocks=8, max_model_len=112)
    old = submit(scheduler, prompt(30, "pa"), max_tokens=40)
    new = submit(scheduler, prompt(30, "pb"), max_tokens=40)
    step(scheduler, clock)
    assert len(scheduler.running) == 2
    preempted_seen = False
    for _ in range(500):
        if old.finished and new.finished:
            break
        step(scheduler, clock)
        if new.num_preemptions and not new.finished and new in scheduler.waiting:
            preempted_seen = True
            assert old in scheduler.running or old.finished  # the oldest keeps running
    assert preempted_seen and scheduler.stats.preemptions >= 1
    assert old.num_preemptions == 0
    assert old.output == reference.output
    assert new.finished and new.num_output_tokens == 40


def test_abort_frees_blocks_and_stops_running() -> None:
    scheduler, clock = make()
    request = submit(scheduler, prompt(50), max_tokens=100)
    step(scheduler, clock)
    step(scheduler, clock)
    assert scheduler.cache.num_free < scheduler.cache.num_blocks - 1
    scheduler.abort(request)
    assert request.finish_reason == "abort"
    assert scheduler.running == [] and scheduler.cache.num_free == scheduler.cache.num_blocks - 1
    assert scheduler.stats.finished["abort"] == 1
    step(scheduler, clock)  # an empty step is harmless


def test_finish_reasons_eos_length_and_stop_strings() -> None:
    scheduler, clock = make()
    eos = SimRequest("e", prompt(5), SamplingParams(max_tokens=500), 0.0)
    scheduler.add(eos)
    length = submit(scheduler, prompt(6), max_tokens=3)
    run(scheduler, clock, eos, length)
    assert eos.finish_reason == "stop" and eos.eos and eos.stop_reason is None
    assert eos.num_output_tokens == len(eos.output) + 1  # the EOS counts as a completion token
    assert length.finish_reason == "length" and length.num_output_tokens == 3

    target = eos.output[3]
    stop = target[1:3]  # two letters inside the fourth word
    cut = submit(scheduler, prompt(5), max_tokens=500, stop=(stop,))
    run(scheduler, clock, cut)
    text = "".join(eos.output)
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.output_text() == text[: text.index(stop)]
    assert len(cut.output) <= 4
