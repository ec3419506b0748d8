"""Response bodies and stream events as TGI 3.x writes them (field order as its serde structs).

Native: ``/generate`` ``{"generated_text", "details"}``; ``/generate_stream`` one event per token
(``index`` from 1; the EOS arrives as the special token ``</s>``), the last one with
``generated_text`` and ``details``; no ``[DONE]``. Messages API: OpenAI-shaped chunks with ``id: ""``,
``system_fingerprint: "<version>-native"``, ``role`` in every chat delta, ``"usage": null`` until the
usage chunk; completion chunks carry ``finish_reason: ""`` until the last one.
"""

from __future__ import annotations

import time
from typing import Any

from backends.sim.context import TGI_VERSION
from backends.sim.http_common import encode
from backends.sim.request import SimRequest
from backends.sim.textgen import VOCAB_INDEX, mix32
from backends.sim.tokenizer import EOS, token_id

SYSTEM_FINGERPRINT = f"{TGI_VERSION}-native"


def finish_reason(sim: SimRequest) -> str:
    if sim.eos:
        return "eos_token"
    return "stop_sequence" if sim.stop_reason is not None else "length"


def openai_finish_reason(sim: SimRequest) -> str:
    return "length" if finish_reason(sim) == "length" else "stop"


def logprob(token_id_: int, position: int) -> float:
    """A stable pseudo log-probability in (-2, 0)."""
    return -round((mix32(token_id_ * 31 + position) % 2000) / 1000 + 0.001, 4)


def token_json(token: str, position: int) -> dict[str, Any]:
    ident = token_id(token, VOCAB_INDEX)
    return {"id": ident, "text": token, "logprob": logprob(ident, position), "special": token == EOS}


def generated_text(sim: SimRequest, prefix: str) -> str:
    return prefix + "".join(sim.output)


def stream_details(sim: SimRequest) -> dict[str, Any]:
    return {"finish_reason": finish_reason(sim), "generated_tokens": sim.num_output_tokens,
            "seed": sim.params.seed, "input_length": sim.num_prompt_tokens}


def stream_event(index: int, token: str, final: dict[str, Any] | None) -> bytes:
    """``final`` carries ``generated_text`` and ``details`` for the last event."""
    if final is not None:
        event = {"index": index, "token": token_json(token, index), "generated_text": final["generated_text"],
                 "details": final["details"]}
        return b"data: " + encode(event) + b"\n\n"
    # The per-token event, assembled from fragments: it is written once per token per stream.
    ident = token_id(token, VOCAB_INDEX)
    return b"".join((b'data: {"index":', str(index).encode(), b',"token":{"id":', str(ident).encode(),
                     b',"text":', encode(token), b',"logprob":', repr(logprob(ident, index)).encode(),
                     b',"special":', b"true" if token == EOS else b"false",
                     b'},"generated_text":null,"details":null}\n\n'))


def error_event(body: dict[str, str]) -> bytes:
    return b"data: " + encode(body) + b"\n\n"


def generate_body(sim: SimRequest, details: bool, prefix: str, prefill: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"generated_text": generated_text(sim, prefix)}
    if details:
        tokens = [*sim.output, *([EOS] if sim.eos else [])]
        prefill_json = [{"id": token_id(t, VOCAB_INDEX), "text": t,
                         "logprob": None if i == 0 else logprob(token_id(t, VOCAB_INDEX), -i)}
                        for i, t in enumerate(prefill or [])]
        body["details"] = {"finish_reason": finish_reason(sim), "generated_tokens": sim.num_output_tokens,
                           "seed": sim.params.seed, "prefill": prefill_json,
                           "tokens": [token_json(t, i + 1) for i, t in enumerate(tokens)]}
    return body


def usage(sim: SimRequest) -> dict[str, int]:
    return {"prompt_tokens": sim.num_prompt_tokens, "completion_tokens": sim.num_output_tokens,
            "total_tokens": sim.num_prompt_tokens + sim.num_output_tokens}


class OpenAIChunks:
    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.created = int(time.time())
        self.model = model
        head = b'"id":"","created":' + str(self.created).encode()
        if chat:
            self._open = (b'data: {"object":"chat.completion.chunk",' + head + b',"model":' + encode(model)
                          + b',"system_fingerprint":' + encode(SYSTEM_FINGERPRINT)
                          + b',"choices":[{"index":0,"delta":{"role":"assistant","content":')
            self._close = b'}],"usage":null}\n\n'
            self._middle = b'},"logprobs":null,"finish_reason":'
        else:
            self._open = b'data: {"object":"text_completion",' + head + b',"choices":[{"index":0,"text":'
            self._middle = b',"logprobs":null,"finish_reason":'
            self._close = (b'}],"model":' + encode(model) + b',"system_fingerprint":'
                           + encode(SYSTEM_FINGERPRINT) + b"}\n\n")

    def chunk(self, text: str, finish: str | None) -> bytes:
        """One stream chunk; completions carry ``finish_reason: ""`` until the last one, as TGI does."""
        reason = encode(finish) if finish is not None else (b"null" if self.chat else b'""')
        return self._open + encode(text) + self._middle + reason + self._close

    def usage_chunk(self, sim: SimRequest) -> bytes:
        body = {"object": "chat.completion.chunk", "id": "", "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": usage(sim)}
        return b"data: " + encode(body) + b"\n\n"

    def whole(self, sim: SimRequest) -> dict[str, Any]:
        text = "".join(sim.output)
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": openai_finish_reason(sim)}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": openai_finish_reason(sim)}
            kind = "text_completion"
        return {"object": kind, "id": "", "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [choice], "usage": usage(sim)}


def info_body(model: str, max_concurrent: int, max_input: int, max_total: int,
              max_stop: int) -> dict[str, Any]:
    return {"model_id": model, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": max_concurrent, "max_best_of": 2, "max_stop_sequences": max_stop,
            "max_input_tokens": max_input, "max_total_tokens": max_total, "validation_workers": 2,
            "max_client_batch_size": 4, "router": "text-generation-router", "version": TGI_VERSION,
            "sha": None, "docker_label": None}
