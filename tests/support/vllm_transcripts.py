"""Record real vLLM responses as raw bytes and derive the facts a test can assert about them.

A transcript is ``NAME.sse`` (the response body exactly as the server sent it, after HTTP/1.1 chunked
framing is removed) plus ``NAME.json`` (the request, the status, and facts: data events, whether a
usage chunk with ``choices: []`` came, the role-only first chat chunk, finish_reason, the text, usage).
The facts are derived by a deliberately naive parse (events split on blank lines) that does not share
code with the gateway's SSE decoder, so a decoder test can compare against them. Stdlib only.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MODEL = "tiny-llama"
# A fixed prompt over 128 tokens would make the recordings depend on the cache; short ones do not.
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me a story about the cache."},
]
COMPLETION_PROMPT = "Hello world, the gateway sends a request to the engine and"
GENERATION = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}


@dataclass(frozen=True)
class TranscriptSpec:
    """One recorded exchange: which endpoint and which body."""

    name: str
    path: str
    body: dict[str, Any]


def _chat(stream_usage: bool | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": CHAT_MESSAGES, "stream": True, **GENERATION, **extra}
    if stream_usage is not None:
        body["stream_options"] = {"include_usage": stream_usage}
    return body


def _completion(stream_usage: bool | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "prompt": COMPLETION_PROMPT, "stream": True, **GENERATION,
                            **extra}
    if stream_usage is not None:
        body["stream_options"] = {"include_usage": stream_usage}
    return body


SPECS = (
    TranscriptSpec("chat_stream_usage", "/v1/chat/completions", _chat(True)),
    TranscriptSpec("chat_stream_no_usage", "/v1/chat/completions", _chat(None)),
    TranscriptSpec("completion_stream_usage", "/v1/completions", _completion(True)),
    TranscriptSpec("completion_stream_no_usage", "/v1/completions", _completion(None)),
    TranscriptSpec("error_max_tokens", "/v1/chat/completions", _chat(True, max_tokens=-1)),
)


@dataclass(frozen=True)
class Recording:
    spec: TranscriptSpec
    status: int
    content_type: str
    body: bytes


def record(base_url: str, spec: TranscriptSpec, timeout_s: float = 60.0) -> Recording:
    """POST the spec's body and read the whole response body as bytes."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout_s)
    try:
        connection.request("POST", spec.path, body=json.dumps(spec.body).encode(),
                           headers={"content-type": "application/json", "accept": "text/event-stream"})
        response = connection.getresponse()
        return Recording(spec, response.status, response.getheader("content-type", ""), response.read())
    finally:
        connection.close()


def data_payloads(body: bytes) -> list[str]:
    """The ``data:`` payload of every event, in order (events end with a blank line)."""
    payloads = []
    for block in body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


def facts(recording: Recording) -> dict[str, Any]:
    """What a test can assert about a recording (ids and timestamps are left out: they change)."""
    spec = recording.spec
    result: dict[str, Any] = {
        "path": spec.path,
        "request": spec.body,
        "status": recording.status,
        "content_type": recording.content_type,
        "body_bytes": len(recording.body),
    }
    if recording.status != 200:
        result["error"] = json.loads(recording.body)["error"]
        result["data_events"] = len(data_payloads(recording.body))
        return result
    payloads = data_payloads(recording.body)
    chunks = [json.loads(payload) for payload in payloads if payload != "[DONE]"]
    choice_chunks = [chunk for chunk in chunks if chunk["choices"]]
    usage_chunks = [chunk for chunk in chunks if not chunk["choices"] and chunk.get("usage")]
    texts = [_chunk_text(chunk) for chunk in choice_chunks]
    finish_reasons = [chunk["choices"][0].get("finish_reason") for chunk in choice_chunks]
    first_delta = choice_chunks[0]["choices"][0].get("delta") if choice_chunks else None
    result.update({
        "data_events": len(payloads),
        "json_events": len(chunks),
        "choice_events": len(choice_chunks),
        "done_last": bool(payloads) and payloads[-1] == "[DONE]",
        "done_count": payloads.count("[DONE]"),
        "role_first": first_delta == {"role": "assistant", "content": ""},
        "usage_chunk": bool(usage_chunks),
        "usage_chunk_index": chunks.index(usage_chunks[0]) if usage_chunks else None,
        "finish_reason": next((reason for reason in finish_reasons if reason), None),
        "finish_reason_index": next((i for i, reason in enumerate(finish_reasons) if reason), None),
        "text": "".join(texts),
        "usage": usage_chunks[0]["usage"] if usage_chunks else None,
        "object": chunks[0]["object"] if chunks else None,
    })
    return result


def _chunk_text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")


def save(recording: Recording, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = facts(recording)
    (out_dir / f"{recording.spec.name}.sse").write_bytes(recording.body)
    (out_dir / f"{recording.spec.name}.json").write_text(json.dumps(recorded, indent=2) + "\n")
    return recorded
