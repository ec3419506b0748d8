"""vLLM's OpenAI-compatible request parsing and error shapes, as vLLM 0.32 answers them.

Errors are ``{"error": {"message", "type", "param", "code"}}``. Two families, as in vLLM:
- request-model validation (pydantic via FastAPI): type ``"Bad Request"``, a ``"N validation error:"``
  message, ``param`` the dotted location (``body.max_tokens``); malformed JSON lands here too;
- engine validation (``VLLMValidationError``): type ``BadRequestError``, the message followed by
  ``(parameter=..., value=...)``, ``param`` the parameter (``max_tokens``, ``temperature``, ``top_p``,
  ``input_tokens``); an unknown model is ``404 NotFoundError`` with ``param: "model"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from backends.sim.chat import ChatFormatError, render_chat
from backends.sim.engine import Engine
from backends.sim.request import SamplingParams

COMPLETION_DEFAULT_MAX_TOKENS = 16


class VllmError(Exception):
    def __init__(self, status: int, message: str, err_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param,
                          "code": self.status}}


def _summary(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "...[truncated]"
    if isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    return value


def request_validation_error(loc: tuple[Any, ...], kind: str, msg: str, value: Any,
                             param: str | None = None) -> VllmError:
    detail = {"type": kind, "loc": loc, "msg": msg, "input": _summary(value)}
    message = f"1 validation error:\n  {detail!r}"
    return VllmError(400, message, HTTPStatus.BAD_REQUEST.phrase, param or ".".join(str(p) for p in loc))


def engine_validation_error(message: str, parameter: str | None = None, value: Any = None) -> VllmError:
    extras = [f"{k}={v}" for k, v in (("parameter", parameter), ("value", value)) if v is not None]
    text = f"{message} ({', '.join(extras)})" if extras else message
    return VllmError(400, text, "BadRequestError", parameter)


def json_error(msg: str, pos: int) -> VllmError:
    detail = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error", "input": {},
              "ctx": {"error": msg}}
    return VllmError(400, f"1 validation error:\n  {detail!r}", HTTPStatus.BAD_REQUEST.phrase, f"body.{pos}")


def status_error(status: int, message: str) -> VllmError:
    """An arbitrary status (fault injection) with the type vLLM gives it."""
    names = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
             503: "ServiceUnavailableError"}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return VllmError(status, message, names.get(status, phrase))


_TYPE_ERRORS = {
    int: ("int_type", "Input should be a valid integer"),
    float: ("float_type", "Input should be a valid number"),
    bool: ("bool_type", "Input should be a valid boolean"),
    str: ("string_type", "Input should be a valid string"),
}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not ok:
        code, msg = _TYPE_ERRORS[kind]
        raise request_validation_error(("body", name), code, msg, value)
    return value


@dataclass
class VllmRequest:
    kind: Literal["completion", "chat"]
    model: str
    tokens: list[str]
    params: SamplingParams
    stream: bool
    include_usage: bool
    continuous_usage: bool


def _common_checks(body: Any, required: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise request_validation_error(("body",), "model_attributes_type",
                                       "Input should be a valid dictionary or object to extract fields from",
                                       body)
    if body.get("stream_options") and not body.get("stream"):
        raise request_validation_error(
            ("body",), "value_error",
            "Value error, Stream options can only be defined when `stream=True`. (parameter=stream_options)",
            body, param="stream_options")
    if required not in body:
        raise request_validation_error(("body", required), "missing", "Field required", body)
    return body


def parse_request(kind: Literal["completion", "chat"], raw: Any, served_model: str,
                  max_model_len: int) -> VllmRequest:
    body = _common_checks(raw, "prompt" if kind == "completion" else "messages")
    if kind == "chat" and body.get("continue_final_message") and body.get("add_generation_prompt"):
        raise request_validation_error(
            ("body",), "value_error",
            "Value error, Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            body, param="")
    model = _field(body, "model", str, served_model)
    stream = _field(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise request_validation_error(("body", "stream_options"), "model_type",
                                       "Input should be a valid dictionary or instance of StreamOptions",
                                       options)
    n = _field(body, "n", int, 1)
    temperature = _field(body, "temperature", float)
    top_p = _field(body, "top_p", float)
    seed = _field(body, "seed", int)
    ignore_eos = _field(body, "ignore_eos", bool, False)
    include_stop = _field(body, "include_stop_str_in_output", bool, False)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise request_validation_error(("body", "stop"), "string_type", "Input should be a valid string",
                                       stop)
    if kind == "completion":
        max_tokens = _field(body, "max_tokens", int, COMPLETION_DEFAULT_MAX_TOKENS)
        if "max_tokens" in body and body["max_tokens"] is None:
            max_tokens = None
    else:
        max_tokens = _field(body, "max_completion_tokens", int) or _field(body, "max_tokens", int)
    if model != served_model:
        raise VllmError(404, f"The model `{model}` does not exist. Valid aliases: {served_model}.",
                        "NotFoundError", "model")
    tokens = _prompt_tokens(kind, body)
    if len(tokens) > max_model_len:
        raise engine_validation_error(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{len(tokens)} input tokens, which exceeds this limit even without any output tokens. Please "
            f"reduce the length of the input prompt.", "input_tokens", len(tokens))
    room = max_model_len - len(tokens)
    effective_max = room if max_tokens is None else min(max_tokens, room)
    params = _sampling_params(effective_max, temperature, top_p, n, seed, ignore_eos, stop, include_stop)
    return VllmRequest(kind, model, tokens, params, stream, bool(options.get("include_usage")),
                       bool(options.get("continuous_usage_stats")))


def _prompt_tokens(kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "chat":
        add_generation_prompt = _field(body, "add_generation_prompt", bool, True)
        continue_final = _field(body, "continue_final_message", bool, False)
        try:
            text = render_chat(body["messages"], add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final)
        except ChatFormatError as exc:
            raise request_validation_error(("body", *exc.param.split(".")), "value_error", str(exc),
                                           body.get("messages")) from None
        return Engine.chat_tokens(text)
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise engine_validation_error("The simulated engine serves one prompt per request.", "prompt")
    if not isinstance(prompt, str):
        raise request_validation_error(("body", "prompt"), "string_type", "Input should be a valid string",
                                       prompt)
    if prompt == "":
        raise request_validation_error(
            ("body",), "value_error",
            "Value error, Either prompt or prompt_embeds must be provided and non-empty.", body, param="")
    return Engine.completion_tokens(prompt)


def _sampling_params(max_tokens: int, temperature: float | None, top_p: float | None, n: int,
                     seed: int | None, ignore_eos: bool, stop: list[str],
                     include_stop: bool) -> SamplingParams:
    """vLLM's ``SamplingParams._verify_args`` for the fields the simulator honours."""
    if n < 1:
        raise engine_validation_error(f"n must be at least 1, got {n}.", "n", n)
    if n > 1:
        raise engine_validation_error("The simulated engine supports n=1 only.", "n", n)
    if temperature is not None:
        if not math.isfinite(temperature):
            raise engine_validation_error(f"temperature must be a finite number, got {temperature}.",
                                          "temperature", temperature)
        if temperature < 0.0:
            raise engine_validation_error(f"temperature must be non-negative, got {temperature}.",
                                          "temperature", temperature)
        if temperature > 2.0:
            raise engine_validation_error(f"temperature must be in [0, 2], got {temperature}.",
                                          "temperature", temperature)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise engine_validation_error(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if max_tokens < 1:
        raise engine_validation_error(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens",
                                      max_tokens)
    return SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, stop=tuple(s for s in stop if s),
                          include_stop_str_in_output=include_stop, seed=seed, temperature=temperature)
