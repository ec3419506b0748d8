"""The load generator's SSE decoder, fed recorded byte streams split at every possible boundary."""

from __future__ import annotations

import pytest

from benchmarks.loadgen.sse import SseDecoder

STREAM = (
    'data: {"choices":[{"text":"h\u00e9"}]}\n\n'
    ": keep-alive\n\n"
    'event: message\nid: 7\ndata: {"choices":[{"text":"b"}]}\n\n'
    'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
    "data: [DONE]\n\n"
).encode()
EXPECTED = ['{"choices":[{"text":"h\u00e9"}]}', '{"choices":[{"text":"b"}]}',
            '{"choices":[],"usage":{"completion_tokens":2}}', "[DONE]"]


def feed_in_pieces(stream: bytes, cuts: list[int]) -> list[str]:
    decoder = SseDecoder()
    out: list[str] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    return out + decoder.flush()


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_every_single_split_point_gives_the_same_events(line_end: bytes) -> None:
    stream = STREAM.replace(b"\n", line_end)
    for cut in range(len(stream) + 1):
        assert feed_in_pieces(stream, [cut]) == EXPECTED, cut


def test_byte_by_byte_including_inside_a_utf8_sequence() -> None:
    assert feed_in_pieces(STREAM, list(range(1, len(STREAM)))) == EXPECTED


def test_multi_line_data_is_joined_and_a_missing_final_blank_line_is_flushed() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\ndata: b\n\ndata:c") == ["a\nb"]
    assert decoder.flush() == ["c"]
    assert decoder.flush() == []
