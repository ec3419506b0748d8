"""The sans-IO SSE decoder: WHATWG parsing rules, and recorded/hand-built engine transcripts split at
every byte boundary and at random places (every ``tests/data/*/*.sse`` file is picked up)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from backends.openai_stream import OpenAiStreamParser
from backends.sse import SseDecoder, SseEvent
from backends.tgi_stream import TgiChatStreamParser, TgiTokenStreamParser
from gateway.types import Delta, Usage

DATA = Path(__file__).resolve().parents[1] / "data"
TRANSCRIPT_FILES = sorted(DATA.glob("*/*.sse"))


def _chunk(obj: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _vllm_chat(created: int = 1764322800) -> bytes:
    """A chat stream in vLLM 0.32's exact shape (role chunk, tokens, finish, usage chunk, [DONE])."""
    head = {"id": "chatcmpl-7d1c", "object": "chat.completion.chunk", "created": created,
            "model": "tiny-llama"}
    out = _chunk({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]})
    for piece in ["Gr\u00fc\u00df", " Gott", " \U0001F44B"]:
        out += _chunk({**head, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                            "finish_reason": None}]})
    out += _chunk({**head, "choices": [{"index": 0, "delta": {"content": "!"}, "logprobs": None,
                                        "finish_reason": "length", "stop_reason": None}]})
    out += _chunk({**head, "choices": [], "usage": {"prompt_tokens": 17, "total_tokens": 21,
                                                    "completion_tokens": 4,
                                                    "prompt_tokens_details": {"cached_tokens": 16}}})
    return out + b"data: [DONE]\n\n"


def _vllm_completion() -> bytes:
    head = {"id": "cmpl-91a0", "object": "text_completion", "created": 1764322800, "model": "tiny-llama"}
    out = b""
    for piece, reason in [(" The", None), (" quick", None), ("\n", "stop")]:
        out += _chunk({**head, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                            "finish_reason": reason, "stop_reason": None}]})
    out += _chunk({**head, "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 6,
                                                    "completion_tokens": 3}})
    return out + b"data: [DONE]\n\n"


INLINE = {"vllm_chat": _vllm_chat(), "vllm_completion": _vllm_completion()}
STREAMS = {**{k: v for k, v in INLINE.items()},
           **{f"{p.parent.name}/{p.name}": p.read_bytes() for p in TRANSCRIPT_FILES}}


def decode_whole(raw: bytes) -> list[SseEvent]:
    return SseDecoder().feed(raw)


def decode_split(raw: bytes, cuts: list[int]) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    start = 0
    for cut in [*cuts, len(raw)]:
        events.extend(decoder.feed(raw[start:cut]))
        start = cut
    return events


def count_data_blocks(raw: bytes) -> int:
    """An independent count: blank-line-terminated blocks that have at least one data field."""
    text = raw.decode("utf-8").lstrip("\ufeff")
    count, has_data = 0, False
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:
        if line == "":
            count += has_data
            has_data = False
        elif line == "data" or line.startswith("data:"):
            has_data = True
    return count


# --- transcripts ---------------------------------------------------------------------------------

def test_transcript_files_exist() -> None:
    assert any(p.parent.name == "tgi" for p in TRANSCRIPT_FILES)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_two_way_split_decodes_like_the_whole(name: str) -> None:
    raw = STREAMS[name]
    whole = decode_whole(raw)
    assert len(whole) == count_data_blocks(raw)
    facts = _facts(name)
    if facts is not None:
        assert len(whole) == facts["data_events"]
    elif not name.startswith("vllm/"):
        assert whole, "hand-built transcripts all carry events"
    for cut in range(len(raw) + 1):
        assert decode_split(raw, [cut]) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_byte_by_byte_and_random_splits_decode_like_the_whole(name: str) -> None:
    raw = STREAMS[name]
    whole = decode_whole(raw)
    assert decode_split(raw, list(range(1, len(raw)))) == whole
    rng = random.Random(name)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), k=rng.randint(1, min(12, len(raw) - 1))))
        assert decode_split(raw, cuts) == whole, f"cuts {cuts}"


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_data_event_is_json_or_done(name: str) -> None:
    for event in decode_whole(STREAMS[name]):
        assert event.data == "[DONE]" or isinstance(json.loads(event.data), dict)


def _facts(name: str) -> dict[str, Any] | None:
    """The recorder's sidecar facts (``NAME.json`` next to ``NAME.sse``), when there are any."""
    sidecar = (DATA / name).with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None


RECORDED_OK = [n for n in sorted(STREAMS) if n.startswith("vllm/") and (_facts(n) or {}).get("status") == 200]


@pytest.mark.parametrize("name", RECORDED_OK)
def test_recorded_vllm_stream_parses_to_its_recorded_facts(name: str) -> None:
    facts = _facts(name)
    assert facts is not None
    parser = OpenAiStreamParser()
    text, reasons, usages = _parse(parser, STREAMS[name])
    assert parser.done and text == facts["text"]
    assert [r for r in reasons if r is not None] == [facts["finish_reason"]]
    assert reasons.index(facts["finish_reason"]) == facts["choice_events"] - 1
    if facts["usage"] is None:
        assert usages == []
    else:
        cached = (facts["usage"].get("prompt_tokens_details") or {}).get("cached_tokens")
        assert usages == [Usage(prompt_tokens=facts["usage"]["prompt_tokens"],
                                completion_tokens=facts["usage"]["completion_tokens"], cached_tokens=cached)]
    first = OpenAiStreamParser().feed(decode_whole(STREAMS[name])[0])
    assert (first == [Delta(role="assistant", text="")]) == facts["role_first"]


def _parse(parser: OpenAiStreamParser | TgiTokenStreamParser | TgiChatStreamParser,
           raw: bytes) -> tuple[str, list[str | None], list[Usage]]:
    deltas: list[Delta] = []
    usages: list[Usage] = []
    for event in [*(e for sse in decode_whole(raw) for e in parser.feed(sse)), *parser.finish()]:
        (deltas if isinstance(event, Delta) else usages).append(event)  # type: ignore[arg-type]
    return "".join(d.text for d in deltas), [d.finish_reason for d in deltas], usages


def test_vllm_chat_transcript_relays_one_delta_per_chunk() -> None:
    parser = OpenAiStreamParser()
    text, reasons, usages = _parse(parser, INLINE["vllm_chat"])
    assert text == "Gr\u00fc\u00df Gott \U0001F44B!"
    assert reasons == [None, None, None, None, "length"]
    assert usages == [Usage(prompt_tokens=17, completion_tokens=4, cached_tokens=16)]
    first = OpenAiStreamParser().feed(decode_whole(INLINE["vllm_chat"])[0])
    assert first == [Delta(role="assistant", text="")]
    assert parser.done and parser.complete


def test_vllm_completion_transcript() -> None:
    text, reasons, usages = _parse(OpenAiStreamParser(), INLINE["vllm_completion"])
    assert (text, reasons) == (" The quick\n", [None, None, "stop"])
    assert usages == [Usage(prompt_tokens=3, completion_tokens=3)]


def test_tgi_length_transcript_with_keepalives_and_multibyte_text() -> None:
    parser = TgiTokenStreamParser([])
    text, reasons, usages = _parse(parser, (DATA / "tgi/generate_stream_length.sse").read_bytes())
    assert text == " Deep learning is caf\u00e9 \u65e5\u672c \U0001F600"
    assert reasons == [None] * 6 + ["length"]
    assert usages == [Usage(prompt_tokens=5, completion_tokens=7)]


def test_tgi_stop_sequence_transcript_with_crlf_cuts_the_stop_text() -> None:
    raw = (DATA / "tgi/generate_stream_stop_sequence.sse").read_bytes()
    assert b"\r\n" in raw
    text, reasons, usages = _parse(TgiTokenStreamParser(["\n\n"]), raw)
    assert (text, reasons[-1]) == (" one, two, three", "stop")
    assert usages == [Usage(prompt_tokens=9, completion_tokens=6)]


def test_tgi_eos_transcript_with_cr_endings_ids_and_retry() -> None:
    raw = (DATA / "tgi/generate_stream_eos.sse").read_bytes()
    decoder = SseDecoder()
    events = decoder.feed(raw)
    assert [e.id for e in events] == ["1", "2", "2"] and decoder.retry_ms == 3000
    text, reasons, usages = _parse(TgiTokenStreamParser([]), raw)
    assert (text, reasons) == (" Hello there", [None, None, "stop"])
    assert usages == [Usage(prompt_tokens=4, completion_tokens=3)]


@pytest.mark.parametrize(("name", "error_type", "tokens_before"), [
    ("generate_stream_error_generation.sse", "generation", 2),
    ("generate_stream_error_overloaded.sse", "overloaded", 0),
    ("generate_stream_error_validation.sse", "validation", 0),
])
def test_tgi_error_transcripts_end_in_an_error_event(name: str, error_type: str, tokens_before: int) -> None:
    events = decode_whole((DATA / "tgi" / name).read_bytes())
    assert len(events) == tokens_before + 1
    assert json.loads(events[-1].data)["error_type"] == error_type


def test_tgi_chat_transcript() -> None:
    text, reasons, usages = _parse(TgiChatStreamParser([]), (DATA / "tgi/chat_stream_usage.sse").read_bytes())
    assert (text, reasons) == ("Bonjour \u00e0 tous", [None, None, None, "length"])
    assert usages == [Usage(prompt_tokens=11, completion_tokens=4)]


# --- decoder rules -------------------------------------------------------------------------------

def test_line_endings_lf_crlf_cr_and_mixed() -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        assert decode_whole(b"data: a" + sep + b"data: b" + sep + sep) == [SseEvent(data="a\nb")]
    assert decode_whole(b"data: a\r\ndata: b\rdata: c\n\r\n") == [SseEvent(data="a\nb\nc")]


def test_crlf_split_between_feeds_is_one_line_ending() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SseEvent(data="x")]
    assert decoder.feed(b"\ndata: y\r\n\r\n") == [SseEvent(data="y")]


def test_field_forms() -> None:
    raw = b"data\n\ndata:no-space\n\ndata:  two spaces\n\nevent\ndata: x\n\n"
    assert decode_whole(raw) == [SseEvent(data=""), SseEvent(data="no-space"),
                                 SseEvent(data=" two spaces"), SseEvent(data="x")]


def test_comments_unknown_fields_and_empty_blocks_dispatch_nothing() -> None:
    assert decode_whole(b": keep-alive\n\n:\n\nfoo: bar\n\nevent: x\n\n\n\n") == []
    assert decode_whole(b"event: x\n\ndata: y\n\n") == [SseEvent(data="y")]


def test_named_events_and_last_event_id() -> None:
    raw = b"id: 7\nevent: error\ndata: {}\n\ndata: next\n\nid: a\x00b\ndata: nul\n\nid\ndata: reset\n\n"
    assert decode_whole(raw) == [SseEvent(data="{}", event="error", id="7"),
                                 SseEvent(data="next", id="7"), SseEvent(data="nul", id="7"),
                                 SseEvent(data="reset", id="")]


def test_retry_only_takes_digits() -> None:
    decoder = SseDecoder()
    decoder.feed(b"retry: 1500\n\nretry: 2s\n\n")
    assert decoder.retry_ms == 1500


def test_incomplete_trailing_event_waits_for_more_bytes() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: one\n\ndata: tw") == [SseEvent(data="one")]
    assert decoder.has_pending
    assert decoder.feed(b"o\n") == []
    assert decoder.feed(b"\n") == [SseEvent(data="two")]
    assert not decoder.has_pending


def test_utf8_split_inside_a_character_and_leading_bom() -> None:
    raw = "\ufeffdata: \u00e9\U0001F600\n\n".encode()
    decoder = SseDecoder()
    events = [e for i in range(len(raw)) for e in decoder.feed(raw[i:i + 1])]
    assert events == [SseEvent(data="\u00e9\U0001F600")]


def test_bom_only_stripped_at_stream_start() -> None:
    assert decode_whole("data: \ufeffx\n\n".encode()) == [SseEvent(data="\ufeffx")]
