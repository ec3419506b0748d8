"""Client request schemas of every dialect (OpenAI chat/completions, native /generate, TGI), parsed once
at the edge with msgspec into the one internal ``GenerateRequest``; bad input becomes a 400 naming the
offending field (``param``)."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from gateway.errors import InvalidRequestError
from gateway.types import GenerateRequest

T = TypeVar("T")

MaxTokens = Annotated[int, Meta(ge=1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Stop = str | Annotated[list[str], Meta(max_length=16)]

# Engine extensions that clients (vllm bench, TGI users) send and engines understand.
PASSTHROUGH_EXTRAS = frozenset({
    "ignore_eos", "top_k", "min_p", "min_tokens", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output",
})


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Annotated[str, Meta(pattern=r"^(system|user|assistant|tool|developer)$")]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionBody(msgspec.Struct):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stop: Stop | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    continue_final_message: bool = False


class CompletionBody(msgspec.Struct):
    model: Annotated[str, Meta(min_length=1)]
    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]
    max_tokens: MaxTokens | None = 16
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stop: Stop | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    echo: Annotated[bool, Meta()] = False


class NativeGenerateBody(msgspec.Struct):
    prompt: str
    max_tokens: MaxTokens = 512
    temperature: Temperature = 0.7
    top_p: TopP = 0.9
    stream: bool = False
    model: str | None = None
    stop: Stop | None = None
    seed: int | None = None


class TgiParameters(msgspec.Struct):
    max_new_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(gt=0.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, lt=1.0)] | None = None
    top_k: Annotated[int, Meta(gt=0)] | None = None
    do_sample: bool = False
    stop: Annotated[list[str], Meta(max_length=4)] = msgspec.field(default_factory=list)
    seed: int | None = None
    details: bool = True
    return_full_text: bool | None = False
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    frequency_penalty: float | None = None


class TgiGenerateBody(msgspec.Struct):
    inputs: Annotated[str, Meta(min_length=1)]
    parameters: TgiParameters = msgspec.field(default_factory=TgiParameters)
    stream: bool = False
    model: str | None = None


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def _param_of(message: str) -> str | None:
    path = ""
    match = _PATH.search(message)
    if match:
        path = match.group("path").lstrip(".")
        message = message[: match.start()]
    missing = _MISSING.search(message)
    if missing:
        path = f"{path}.{missing.group('field')}" if path else missing.group("field")
    return path or None


def decode_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    return data


def convert(data: dict[str, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidRequestError(message, param=_param_of(message)) from None


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _extras(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in PASSTHROUGH_EXTRAS}


def parse_chat(data: dict[str, Any]) -> GenerateRequest:
    body = convert(data, ChatCompletionBody)
    messages = [msgspec.to_builtins(m) for m in body.messages]
    if body.continue_final_message and body.messages[-1].role != "assistant":
        raise InvalidRequestError("continue_final_message needs a final assistant message",
                                  param="messages")
    return GenerateRequest(
        kind="chat", model=body.model, messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, stop=_stop_list(body.stop), seed=body.seed, stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        user=body.user, extra=_extras(data), continue_final_message=body.continue_final_message,
    )


def parse_completion(data: dict[str, Any]) -> GenerateRequest:
    body = convert(data, CompletionBody)
    if body.echo:
        raise InvalidRequestError("echo is not supported", param="echo")
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return GenerateRequest(
        kind="completion", model=body.model, prompt=prompt, max_tokens=body.max_tokens,
        temperature=body.temperature, top_p=body.top_p, stop=_stop_list(body.stop), seed=body.seed,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        user=body.user, extra=_extras(data),
    )


def parse_native(data: dict[str, Any], default_model: str) -> GenerateRequest:
    body = convert(data, NativeGenerateBody)
    return GenerateRequest(
        kind="completion", model=body.model or default_model, prompt=body.prompt,
        max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
        stop=_stop_list(body.stop), seed=body.seed, stream=body.stream, include_usage=True,
        extra=_extras(data),
    )


def parse_tgi(data: dict[str, Any], default_model: str, *, stream: bool | None = None) -> TgiRequest:
    body = convert(data, TgiGenerateBody)
    params = body.parameters
    temperature = params.temperature if params.do_sample or params.temperature else 0.0
    extra: dict[str, Any] = {}
    if params.top_k is not None:
        extra["top_k"] = params.top_k
    if params.repetition_penalty is not None:
        extra["repetition_penalty"] = params.repetition_penalty
    if params.frequency_penalty is not None:
        extra["frequency_penalty"] = params.frequency_penalty
    request = GenerateRequest(
        kind="completion", model=body.model or default_model, prompt=body.inputs,
        max_tokens=params.max_new_tokens or 1024, temperature=temperature, top_p=params.top_p,
        stop=list(params.stop), seed=params.seed,
        stream=body.stream if stream is None else stream, include_usage=True, extra=extra,
    )
    return TgiRequest(request=request, details=params.details,
                      return_full_text=bool(params.return_full_text))


class TgiRequest(msgspec.Struct):
    request: GenerateRequest
    details: bool
    return_full_text: bool
