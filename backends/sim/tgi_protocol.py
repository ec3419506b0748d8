"""TGI 3.x request parsing and error shapes for the simulated engine's TGI dialect.

Errors follow TGI's router: a body that is not JSON is ``400`` plain text (axum's
``Failed to parse the request body as JSON: ...``), one that does not fit the request type ``422``
plain text (``Failed to deserialize the JSON body into the target type: ...``); parameter validation
is ``422 {"error", "error_type": "validation"}`` with TGI's messages; overload ``429 overloaded``;
generation failures ``424 generation``. Inside ``/generate_stream`` and the streaming Messages API the
validation and overload errors arrive as an SSE event in a 200 response, as TGI's stream does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from backends.sim.chat import ChatFormatError, render_chat
from backends.sim.engine import Engine
from backends.sim.http_common import BadJSON
from backends.sim.request import SamplingParams


class TgiError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class TgiRejection(Exception):
    """An extractor rejection: plain-text body, no JSON."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def validation(message: str) -> TgiError:
    return TgiError(422, message, "validation")


OVERLOADED = TgiError(429, "Model is overloaded", "overloaded")


def generation_error(message: str) -> TgiError:
    return TgiError(424, f"Request failed during generation: {message}", "generation")


def status_error(status: int, message: str) -> TgiError:
    kinds = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation",
             503: "unhealthy"}
    return TgiError(status, message, kinds.get(status, "generation"))


def json_rejection(exc: BadJSON) -> TgiRejection:
    msg = {"Expecting value": "expected value",
           "Expecting property name enclosed in double quotes": "key must be a string"}.get(exc.msg, exc.msg)
    return TgiRejection(400, f"Failed to parse the request body as JSON: {msg.lower()} at line "
                             f"{exc.lineno} column {exc.colno}")


def _reject(path: str, what: str) -> TgiRejection:
    where = f"{path}: " if path else ""
    return TgiRejection(422, f"Failed to deserialize the JSON body into the target type: {where}{what}")


def _typed(container: dict[str, Any], key: str, kind: str, path: str) -> Any:
    """serde's view of an optional field: None when absent/null, else the value if it has ``kind``."""
    value = container.get(key)
    if value is None:
        return None
    name = f"{path}{key}"
    if kind == "u32":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _reject(name, f"invalid type: {_serde_kind(value)}, expected u32")
        if value < 0:
            raise _reject(name, f"invalid value: integer `{value}`, expected u32")
        return value
    if kind == "f32":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _reject(name, f"invalid type: {_serde_kind(value)}, expected f32")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _reject(name, f"invalid type: {_serde_kind(value)}, expected a boolean")
        return value
    if kind == "stop":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise _reject(name, "invalid type: expected a sequence of strings")
        return value
    raise AssertionError(kind)


def _serde_kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "integer" if isinstance(value, int) else "null"


@dataclass
class TgiRequest:
    tokens: list[str]
    params: SamplingParams
    stream: bool
    details: bool = True
    decoder_input_details: bool = False
    return_full_text: bool = False
    inputs: str = ""
    include_usage: bool = False
    input_length: int = 0


def _object(raw: Any, required: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _reject("", f"invalid type: {_serde_kind(raw)}, expected struct")
    if required not in raw:
        raise _reject("", f"missing field `{required}`")
    return raw


def _sampling(params: dict[str, Any], prefix: str, input_length: int, max_total: int, max_input: int,
              max_stop: int, new_tokens_key: str, greedy_zero: bool) -> SamplingParams:
    """TGI's ``Validation::validate`` for the parameters the simulator honours."""
    temperature = _typed(params, "temperature", "f32", prefix)
    top_p = _typed(params, "top_p", "f32", prefix)
    top_k = _typed(params, "top_k", "u32", prefix)
    repetition = _typed(params, "repetition_penalty", "f32", prefix)
    frequency = _typed(params, "frequency_penalty", "f32", prefix)
    max_new = _typed(params, new_tokens_key, "u32", prefix)
    stop = _typed(params, "stop", "stop", prefix) or []
    seed = _typed(params, "seed", "u32", prefix)
    ignore_eos = bool(_typed(params, "ignore_eos", "bool", prefix))
    if greedy_zero and temperature == 0.0:
        temperature = None
    elif temperature is not None and (temperature <= 0.0 or not math.isfinite(temperature)):
        raise validation("`temperature` must be strictly positive")
    if repetition is not None and repetition <= 0.0:
        raise validation("`repetition_penalty` must be strictly positive")
    if frequency is not None and not -2.0 <= frequency <= 2.0:
        raise validation("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if top_p is not None and not 0.0 < top_p < 1.0:
        raise validation("`top_p` must be > 0.0 and < 1.0")
    if top_k is not None and top_k <= 0:
        raise validation("`top_k` must be strictly positive")
    if len(stop) > max_stop:
        raise validation(f"`stop` supports up to {max_stop} stop sequences. Given: {len(stop)}")
    if max_new is not None and max_new == 0:
        raise validation("`max_new_tokens` must be strictly positive")
    if input_length > max_input:
        raise validation(f"`inputs` must have less than {max_input} tokens. Given: {input_length}")
    if max_new is None:
        max_new = max_total - input_length
    if input_length + max_new > max_total:
        raise validation(f"`inputs` tokens + `max_new_tokens` must be <= {max_total}. Given: {input_length} "
                         f"`inputs` tokens and {max_new} `max_new_tokens`")
    sampling = temperature is not None or bool(params.get("do_sample"))
    return SamplingParams(max_tokens=max_new, ignore_eos=ignore_eos, stop=tuple(s for s in stop if s),
                          include_stop_str_in_output=True, seed=seed,
                          temperature=temperature if sampling else 0.0)


@dataclass(frozen=True)
class Limits:
    max_total_tokens: int
    max_input_tokens: int
    max_stop_sequences: int


def parse_generate(raw: Any, limits: Limits, stream: bool) -> TgiRequest:
    body = _object(raw, "inputs")
    inputs = body["inputs"]
    if not isinstance(inputs, str):
        raise _reject("inputs", f"invalid type: {_serde_kind(inputs)}, expected a string")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _reject("parameters",
                      f"invalid type: {_serde_kind(params)}, expected struct GenerateParameters")
    if inputs == "":
        raise validation("`inputs` cannot be empty")
    tokens = Engine.completion_tokens(inputs)
    sampling = _sampling(params, "parameters.", len(tokens), limits.max_total_tokens, limits.max_input_tokens,
                         limits.max_stop_sequences, "max_new_tokens", greedy_zero=False)
    details = _typed(params, "details", "bool", "parameters.")
    return TgiRequest(tokens, sampling, stream, details=True if details is None else details,
                      decoder_input_details=bool(_typed(params, "decoder_input_details", "bool",
                                                        "parameters.")),
                      return_full_text=bool(_typed(params, "return_full_text", "bool", "parameters.")),
                      inputs=inputs, input_length=len(tokens))


def parse_openai(raw: Any, limits: Limits, chat: bool) -> TgiRequest:
    body = _object(raw, "messages" if chat else "prompt")
    if chat:
        try:
            text = render_chat(body["messages"], add_generation_prompt=not body.get("continue_final_message"),
                               continue_final_message=bool(body.get("continue_final_message")))
        except ChatFormatError as exc:
            raise TgiError(422, f"Template error: {exc}", "template_error") from None
        tokens = Engine.chat_tokens(text)
    else:
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            if isinstance(prompt, list):
                raise validation("Number of prompts must be 1 with the simulated engine")
            raise _reject("prompt", f"invalid type: {_serde_kind(prompt)}, expected a sequence")
        tokens = Engine.completion_tokens(prompt)
    stream = bool(_typed(body, "stream", "bool", ""))
    options = body.get("stream_options") or {}
    sampling = _sampling(body, "", len(tokens), limits.max_total_tokens, limits.max_input_tokens,
                         limits.max_stop_sequences, "max_tokens", greedy_zero=True)
    return TgiRequest(tokens, sampling, stream, include_usage=bool(isinstance(options, dict)
                                                                   and options.get("include_usage")),
                      input_length=len(tokens))
