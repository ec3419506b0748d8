"""The adapters' sans-IO parts: stream parsers, stop trimming, request bodies, error mapping, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from backends import tgi, vllm
from backends.http_errors import EngineReportedError, MalformedEventError
from backends.openai_stream import OpenAiStreamParser
from backends.prom_text import parse_metrics
from backends.sse import SseEvent
from backends.tgi_stream import StopTrimmer, TgiChatStreamParser, TgiTokenStreamParser
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.types import Delta, GenerateRequest, Usage

VLLM_DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"


def _data(obj: object) -> SseEvent:
    return SseEvent(data=json.dumps(obj))


# --- OpenAI stream parser ----------------------------------------------------------------------

def test_usage_riding_on_a_choice_chunk_is_handed_out_once_at_the_end() -> None:
    parser = OpenAiStreamParser()
    chunk = {"choices": [{"index": 0, "text": "a", "finish_reason": None}],
             "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    assert parser.feed(_data(chunk)) == [Delta(text="a")]
    last = {"choices": [{"index": 0, "text": "b", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2}}
    assert parser.feed(_data(last)) == [Delta(text="b", finish_reason="stop")]
    assert parser.complete and not parser.done
    assert parser.finish() == [Usage(prompt_tokens=2, completion_tokens=2)]
    assert parser.finish() == []


def test_null_content_and_null_usage_are_empty_not_errors() -> None:
    parser = OpenAiStreamParser()
    chunk = {"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": None}], "usage": None}
    assert parser.feed(_data(chunk)) == [Delta(text="")]
    assert not parser.complete and parser.finish() == []


def test_empty_finish_reason_means_none() -> None:
    parser = OpenAiStreamParser()
    chunk = {"choices": [{"index": 0, "text": "a", "finish_reason": ""}]}
    assert parser.feed(_data(chunk)) == [Delta(text="a")]
    assert not parser.complete


@pytest.mark.parametrize("data", ['{"choices": [', '[1, 2]', '{"choices": "x"}', "nonsense"])
def test_garbage_chunks_are_malformed(data: str) -> None:
    with pytest.raises(MalformedEventError):
        OpenAiStreamParser().feed(SseEvent(data=data))


def test_error_objects_and_error_events_are_reported() -> None:
    payload = {"error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}}
    with pytest.raises(EngineReportedError) as caught:
        OpenAiStreamParser().feed(_data(payload))
    assert caught.value.payload == payload
    with pytest.raises(EngineReportedError):
        OpenAiStreamParser().feed(SseEvent(data="not json", event="error"))


def test_chunk_after_done_is_malformed() -> None:
    parser = OpenAiStreamParser()
    parser.feed(SseEvent(data="[DONE]"))
    with pytest.raises(MalformedEventError):
        parser.feed(_data({"choices": [{"index": 0, "text": "late"}]}))


# --- TGI parsers and stop trimming -------------------------------------------------------------

def _token(text: str, special: bool = False, details: dict[str, object] | None = None) -> SseEvent:
    return _data({"index": 1, "token": {"id": 1, "text": text, "logprob": -1.0, "special": special},
                  "generated_text": None, "details": details, "top_tokens": []})


def test_stop_trimmer_cuts_a_stop_spanning_several_tokens() -> None:
    trimmer = StopTrimmer(["END", "\n"])
    relayed = [trimmer.text(t, None) for t in ["Hello", " wor", "ld E", "N"]]
    relayed.append(trimmer.text("D", "stop"))
    assert "".join(relayed) == "Hello world "
    assert relayed[0] == "He"  # only the last len("END") characters are ever held back


def test_stop_trimmer_keeps_text_when_the_finish_was_not_a_stop() -> None:
    trimmer = StopTrimmer(["xy"])
    assert trimmer.text("abxy"[:3], None) + trimmer.text("y", "length") == "abxy"
    assert StopTrimmer([]).text("as is", None) == "as is"


def test_tgi_token_parser_maps_finish_reasons_and_usage() -> None:
    for tgi_reason, reason in [("eos_token", "stop"), ("stop_sequence", "stop"), ("length", "length")]:
        parser = TgiTokenStreamParser([])
        details = {"finish_reason": tgi_reason, "generated_tokens": 3, "input_length": 7, "seed": None}
        assert parser.feed(_token("x", details=details)) == [Delta(text="x", finish_reason=reason)]
        assert parser.complete
        assert parser.finish() == [Usage(prompt_tokens=7, completion_tokens=3)]


def test_tgi_token_parser_rejects_events_after_the_end_and_tokenless_events() -> None:
    parser = TgiTokenStreamParser([])
    parser.feed(_token("x", details={"finish_reason": "length", "generated_tokens": 1, "input_length": 1}))
    with pytest.raises(MalformedEventError):
        parser.feed(_token("y"))
    with pytest.raises(MalformedEventError):
        TgiTokenStreamParser([]).feed(_data({"index": 1}))


def test_tgi_special_tokens_relay_as_empty_text() -> None:
    assert TgiTokenStreamParser([]).feed(_token("</s>", special=True)) == [Delta(text="")]


def test_tgi_chat_parser_translates_finish_reasons_and_sends_the_role_once() -> None:
    parser = TgiChatStreamParser([])
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                            "finish_reason": reason}]} for text, reason in [("hi", None), ("!", "eos_token")]]
    assert [parser.feed(_data(chunk)) for chunk in chunks] == [
        [Delta(text="hi", role="assistant")], [Delta(text="!", finish_reason="stop")]]


# --- request bodies ----------------------------------------------------------------------------

def test_vllm_body_always_streams_with_usage_and_merges_extra_first() -> None:
    request = GenerateRequest(kind="chat", model="m", messages=[{"role": "user", "content": "hi"}],
                              max_tokens=5, temperature=0.0, stop=["\n"], seed=3, user="u",
                              extra={"ignore_eos": True, "stream": False, "model": "other"},
                              continue_final_message=True)
    assert msgspec.json.decode(vllm.build_body(request)) == {
        "ignore_eos": True, "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 5,
        "temperature": 0.0, "seed": 3, "user": "u", "stop": ["\n"], "stream": True,
        "stream_options": {"include_usage": True}}


def test_vllm_completion_body_leaves_unset_fields_out() -> None:
    body = msgspec.json.decode(vllm.build_body(GenerateRequest(kind="completion", model="m", prompt="p")))
    assert body == {"model": "m", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("temperature", "top_p", "expected"), [
    (None, None, {"do_sample": False}),
    (0.0, 0.5, {"do_sample": False}),
    (0.7, 1.0, {"do_sample": True, "temperature": 0.7}),
    (0.7, 0.9, {"do_sample": True, "temperature": 0.7, "top_p": 0.9}),
    (None, 0.9, {"do_sample": True, "top_p": 0.9}),
])
def test_tgi_native_body_sampling_rules(temperature: float | None, top_p: float | None,
                                        expected: dict[str, object]) -> None:
    request = GenerateRequest(kind="completion", model="m", prompt="p", max_tokens=4,
                              temperature=temperature, top_p=top_p, stop=["a"], seed=9,
                              extra={"ignore_eos": True, "top_k": 5})
    assert msgspec.json.decode(tgi.native_body(request)) == {
        "inputs": "p", "parameters": {"top_k": 5, "max_new_tokens": 4, **expected, "stop": ["a"],
                                      "seed": 9, "details": True}}


def test_tgi_chat_body() -> None:
    request = GenerateRequest(kind="chat", model="m", messages=[{"role": "user", "content": "hi"}],
                              max_tokens=4, temperature=0.0, top_p=1.0, user="u",
                              extra={"ignore_eos": True, "presence_penalty": 0.5},
                              continue_final_message=True)
    assert msgspec.json.decode(tgi.chat_body(request)) == {
        "presence_penalty": 0.5, "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "continue_final_message": True, "max_tokens": 4, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True}}


# --- error mapping -----------------------------------------------------------------------------

def test_vllm_recorded_max_tokens_error_maps_to_invalid_request_with_param() -> None:
    raw = (VLLM_DATA / "error_max_tokens.sse").read_bytes()
    error = vllm.error_for_response(400, raw)
    assert isinstance(error, InvalidRequestError) and not error.retryable
    assert error.param == "max_tokens" and "max_tokens must be at least 1" in error.message


@pytest.mark.parametrize(("status", "body", "kind", "param"), [
    (404, {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                     "param": "model", "code": 404}}, NotFoundError, "model"),
    (404, {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError",
           "param": None, "code": 404}, NotFoundError, "model"),
    (404, {"detail": "Not Found"}, UpstreamError, None),
    (401, {"error": "Unauthorized"}, UpstreamError, None),
    (400, {"error": {"message": "too long", "type": "BadRequestError", "param": "input_tokens",
                     "code": 400}}, InvalidRequestError, "input_tokens"),
    (400, {"error": {"message": "1 validation error: ...", "type": "Bad Request", "param": "body.max_tokens",
                     "code": 400}}, InvalidRequestError, "max_tokens"),
    (400, {"error": {"message": "1 validation error: json_invalid", "type": "Bad Request",
                     "param": "body.17", "code": 400}}, InvalidRequestError, None),
    (429, {"error": {"message": "busy"}}, UpstreamUnavailableError, None),
    (500, {"error": {"message": "boom"}}, UpstreamError, None),
    (503, {"error": {"message": "sleeping"}}, UpstreamUnavailableError, None),
    (504, {"error": {"message": "slow"}}, UpstreamTimeoutError, None),
])
def test_vllm_error_bodies(status: int, body: object, kind: type[Exception], param: str | None) -> None:
    error = vllm.error_for_response(status, json.dumps(body).encode())
    assert type(error) is kind and error.param == param


def test_vllm_in_stream_error_uses_its_code() -> None:
    error = vllm.error_for_report({"error": {"message": "bad", "param": "temperature", "code": 400}})
    assert isinstance(error, InvalidRequestError) and error.param == "temperature"
    assert isinstance(vllm.error_for_report({"error": {"message": "oops"}}), UpstreamError)


@pytest.mark.parametrize(("message", "kind", "param"), [
    ("Input validation error: `max_new_tokens` must be strictly positive", "completion", "max_tokens"),
    ("Input validation error: `top_p` must be > 0.0 and < 1.0", "completion", "top_p"),
    ("Input validation error: `stop` supports up to 4 stop sequences. Given: 5", "chat", "stop"),
    ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048", "chat", "messages"),
    ("Input validation error: `inputs` cannot be empty", "completion", "prompt"),
    ("something else entirely", "completion", None),
])
def test_tgi_validation_errors_guess_the_param(message: str, kind: str, param: str | None) -> None:
    for status in (422, None):
        error = tgi.map_error({"error": message, "error_type": "validation"}, status, kind)
        assert isinstance(error, InvalidRequestError) and error.param == param
        assert error.message == message


@pytest.mark.parametrize(("error_type", "status", "kind"), [
    ("overloaded", 429, UpstreamUnavailableError),
    ("generation", 424, UpstreamError),
    ("incomplete_generation", 500, UpstreamError),
    ("healthcheck", 503, UpstreamUnavailableError),
])
def test_tgi_error_types(error_type: str, status: int, kind: type[Exception]) -> None:
    for given in (status, None, 200):
        error = tgi.map_error({"error": "x", "error_type": error_type}, given, "completion")
        assert type(error) is kind and error.retryable


# --- Prometheus text ---------------------------------------------------------------------------

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 4.0
weird{a="x\\"y"} NaN
"""


def test_parse_metrics_sums_means_and_skips_unwanted_lines() -> None:
    samples = parse_metrics(METRICS, ["vllm:num_requests_running", "vllm:kv_cache_usage_perc", "weird"])
    assert samples.sum("vllm:num_requests_running") == 3.0
    assert samples.mean("vllm:kv_cache_usage_perc") == 0.375
    assert samples.sum("weird") is None and samples.label_sets("weird") == [{"a": 'x"y'}]
    assert samples.sum("vllm:num_requests_waiting") is None


def test_parse_metrics_rejects_a_malformed_wanted_line() -> None:
    with pytest.raises(ValueError):
        parse_metrics('m{a="1" 3\n', ["m"])
