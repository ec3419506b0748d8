"""Workloads: determinism by seed, Zipf tenant shape, sessions, token predictability, traces."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from backends.sim.tokenizer import tokenize
from benchmarks.workloads import (
    VOCAB,
    Message,
    RequestSpec,
    SharedPrefixWorkload,
    TraceFormatError,
    TraceWorkload,
    UniformRandomWorkload,
    random_words,
    render_transcript,
)

SMALL = SharedPrefixWorkload(tenants=8, prefix_words=6, suffix_words=3, output_tokens=4)


def test_same_seed_same_requests_other_seed_other_requests() -> None:
    for workload in (SMALL, UniformRandomWorkload(input_words=20, range_ratio=0.5)):
        first = list(workload.generate(300, seed=3))
        assert first == list(workload.generate(300, seed=3))
        assert first != list(workload.generate(300, seed=4))
        assert [spec.index for spec in first] == list(range(300))


def test_tenant_popularity_follows_zipf() -> None:
    counts = Counter(spec.tenant for spec in SMALL.generate(20_000, seed=1))
    weights = [1 / (k + 1) ** 1.1 for k in range(8)]
    total_weight = sum(weights)
    sessions_skew = 0.15  # session turns repeat their tenant: allow for the extra variance
    for k, weight in enumerate(weights):
        expected = 20_000 * weight / total_weight
        assert counts[SMALL.tenant_name(k)] == pytest.approx(expected, rel=sessions_skew), k
    ranked = [SMALL.tenant_name(k) for k in range(8)]
    assert [t for t, _ in counts.most_common(3)] == ranked[:3]


def test_half_the_traffic_is_in_sessions_that_resend_their_history() -> None:
    specs = list(SMALL.generate(4000, seed=2))
    in_sessions = [s for s in specs if s.session is not None]
    assert len(in_sessions) / len(specs) == pytest.approx(0.5, abs=0.03)
    by_session: dict[str, list[RequestSpec]] = {}
    for spec in in_sessions:
        by_session.setdefault(spec.session or "", []).append(spec)
    assert len(by_session) > 100
    for turns in by_session.values():
        assert [t.turn for t in turns] == list(range(len(turns)))
        assert len(turns) <= SMALL.max_turns and len({t.tenant for t in turns}) == 1
        for previous, current in itertools.pairwise(turns):
            assert current.messages[: len(previous.messages)] == previous.messages
            assert [m.role for m in current.messages[len(previous.messages):]] == ["assistant", "user"]
            assert current.as_prompt().startswith(previous.as_prompt())
            grown = SMALL.output_tokens + SMALL.suffix_words
            assert current.prompt_words == (previous.prompt_words or 0) + grown
    finished = [t for t in by_session.values() if len(t) >= SMALL.min_turns]
    assert len(finished) > len(by_session) * 0.8


def test_tenant_prefixes_do_not_depend_on_the_request_seed() -> None:
    def prefixes(seed: int) -> dict[str | None, str]:
        return {s.tenant: s.messages[0].content for s in SMALL.generate(200, seed)}

    first, second = prefixes(1), prefixes(2)
    assert all(first[t] == second[t] for t in first.keys() & second.keys())
    assert len(set(first.values())) == len(first)


def test_words_are_one_token_each_for_the_sim_tokenizer() -> None:
    rng = random.Random(0)
    for count in (1, 10, 2048):
        text = random_words(rng, count)
        assert len(text.split(" ")) == count
        assert len(tokenize(text)) == count
        assert len(tokenize(" " + text)) == count
    assert all(word.isalpha() and len(word) <= 4 for word in VOCAB)


def test_shared_prefix_prompt_words_count_the_words_sent() -> None:
    workload = SharedPrefixWorkload(tenants=4, prefix_words=50, suffix_words=10, output_tokens=5)
    for spec in workload.generate(50, seed=0):
        words = sum(len(m.content.split()) for m in spec.messages)
        assert spec.prompt_words == words


def test_uniform_lengths_stay_in_range() -> None:
    specs = list(UniformRandomWorkload(input_words=100, output_tokens=20, range_ratio=0.5).generate(500, 1))
    assert all(50 <= s.prompt_words <= 150 and 10 <= s.max_tokens <= 30 for s in specs if s.prompt_words)
    assert all(len((s.prompt or "").split()) == s.prompt_words for s in specs)
    exact = list(UniformRandomWorkload(input_words=7, output_tokens=3).generate(20, 1))
    assert {(s.prompt_words, s.max_tokens) for s in exact} == {(7, 3)}


def test_trace_replay(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    rows = [
        {"prompt": "hello", "max_tokens": 5, "timestamp": 1.5, "tenant": "a"},
        {},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
         "output_tokens": 7, "session": "x", "turn": 1},
        {"prompt": "third"},
    ]
    path.write_text("\n".join(json.dumps(r) if r else "" for r in rows) + "\n")
    specs = list(TraceWorkload(path, default_output_tokens=9).generate(10, seed=0))
    assert [(s.index, s.max_tokens, s.timestamp, s.tenant, s.session, s.turn) for s in specs] == [
        (0, 5, 1.5, "a", None, 0), (1, 7, None, None, "x", 1), (2, 9, None, None, None, 0)]
    assert specs[1].as_prompt() == "s\n\nUser: q\nAssistant:"
    assert len(list(TraceWorkload(path).generate(2, seed=0))) == 2
    path.write_text('{"prompt": "ok"}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(TraceFormatError, match=":2:"):
        list(TraceWorkload(path).generate(10, seed=0))


def test_spec_rendering_and_reply_substitution() -> None:
    spec = RequestSpec(index=0, max_tokens=3, messages=(
        Message("system", "sys"), Message("user", "u0"), Message("assistant", " a0"), Message("user", "u1")))
    assert render_transcript(spec.messages) == "sys\n\nUser: u0\nAssistant: a0\nUser: u1\nAssistant:"
    replaced = spec.with_assistant_replies({0: " real"})
    assert replaced.messages[2] == Message("assistant", " real") and replaced.messages[3] == spec.messages[3]
    assert RequestSpec(index=0, max_tokens=1, prompt="p").as_messages() == (Message("user", "p"),)
    with pytest.raises(ValueError):
        RequestSpec(index=0, max_tokens=1)
    with pytest.raises(ValueError):
        RequestSpec(index=0, max_tokens=0, prompt="p")
