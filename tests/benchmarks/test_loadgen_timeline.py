"""Per-request metrics from fake event timelines, against values computed by hand
(reference/benchmarks.md: TTFT, ITL, E2EL, usage tokens, TPOT, failures)."""

from __future__ import annotations

import json

import pytest

from benchmarks.loadgen.records import RequestRecord
from benchmarks.loadgen.timeline import Outcome, StreamTimeline


def feed(timeline: StreamTimeline, events: list[tuple[float, object]]) -> Outcome:
    for at, payload in events:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        timeline.on_payload(at, data, None if data == "[DONE]" else json.loads(data))
    return timeline.outcome()


def record(outcome: Outcome) -> RequestRecord:
    return RequestRecord(index=0, arrival=0.0, start=0.0, max_tokens=4, success=outcome.success,
                         ttft=outcome.ttft, itl=outcome.itl, e2el=outcome.e2el,
                         completion_tokens=outcome.completion_tokens)


def token(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": None}]}


def test_completions_stream() -> None:
    # start 10.0; tokens at 10.2, 10.25, 10.4, 10.7 (the last carries finish_reason and empty text);
    # usage at 10.8 must not move E2EL; [DONE] at 10.9.
    outcome = feed(StreamTimeline(start=10.0), [
        (10.2, token("a")), (10.25, token(" b")), (10.4, token(" c")),
        (10.7, {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}),
        (10.8, {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11,
                                          "prompt_tokens_details": {"cached_tokens": 5}}}),
        (10.9, "[DONE]"),
    ])
    assert outcome.success and outcome.error is None
    assert outcome.ttft == pytest.approx(0.2)
    assert outcome.itl == pytest.approx([0.05, 0.15, 0.3])
    assert outcome.e2el == pytest.approx(0.7)
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens) == (7, 4, 5)
    assert outcome.text == "a b c"
    assert record(outcome).tpot == pytest.approx((0.7 - 0.2) / 3)


def test_role_only_chat_chunk_counts_for_ttft_and_tokens_come_from_usage_not_chunks() -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    content = {"choices": [{"index": 0, "delta": {"content": "xy z"}}]}  # one chunk, three tokens
    outcome = feed(StreamTimeline(start=0.0), [
        (0.1, role), (0.5, content),
        (0.6, {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}), (0.6, "[DONE]"),
    ])
    assert outcome.ttft == pytest.approx(0.1)
    assert outcome.itl == pytest.approx([0.4])
    assert outcome.e2el == pytest.approx(0.5)
    assert outcome.completion_tokens == 3
    assert record(outcome).tpot == pytest.approx(0.4 / 2)
    assert outcome.text == "xy z"


def test_one_output_token_has_no_tpot_and_missing_usage_leaves_counts_unknown() -> None:
    outcome = feed(StreamTimeline(start=0.0), [(0.3, token("a")), (0.3, "[DONE]")])
    assert outcome.success and outcome.completion_tokens is None and record(outcome).tpot is None
    one = feed(StreamTimeline(start=0.0), [
        (0.3, token("a")), (0.31, {"choices": [], "usage": {"completion_tokens": 1}}), (0.31, "[DONE]")])
    assert one.completion_tokens == 1 and record(one).tpot is None


@pytest.mark.parametrize(("events", "reason"), [
    ([(0.1, {"choices": [], "usage": {"completion_tokens": 0}}), (0.1, "[DONE]")], "no choice-bearing event"),
    ([(0.1, token("a")), (0.2, {"error": {"message": "boom", "type": "InternalServerError"}}),
      (0.2, "[DONE]")], "error event: boom"),
    ([(0.1, token("a")), (0.2, token("b"))], "stream ended without [DONE]"),
    ([(0.1, "[1, 2]")], "non-object SSE payload"),
])
def test_failures_are_recorded_with_their_reason(events: list[tuple[float, object]], reason: str) -> None:
    outcome = feed(StreamTimeline(start=0.0), events)
    assert not outcome.success
    assert outcome.error is not None and outcome.error.startswith(reason)


def test_first_failure_reason_wins_and_http_status_is_kept() -> None:
    timeline = StreamTimeline(start=0.0, http_status=503)
    timeline.fail("HTTP 503: overloaded")
    timeline.fail("later")
    outcome = timeline.outcome()
    assert (outcome.success, outcome.error, outcome.http_status) == (False, "HTTP 503: overloaded", 503)


def test_non_streamed_response_has_e2el_but_no_ttft() -> None:
    timeline = StreamTimeline(start=1.0)
    timeline.on_response(1.5, {"choices": [{"index": 0, "text": "abc"}],
                               "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    outcome = timeline.outcome()
    assert outcome.success and outcome.ttft is None and outcome.itl == []
    assert outcome.e2el == pytest.approx(0.5) and outcome.completion_tokens == 3
