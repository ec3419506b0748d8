"""The HTTP side of one benchmark request: the OpenAI-compatible body, the POST over a shared
aiohttp session, and the streamed response fed to a ``StreamTimeline`` as it arrives.

``start`` is ``time.perf_counter()`` just before the POST; every network chunk is stamped when it
arrives, before it is decoded, so the client's own parsing does not shift the events. Streams always
ask for ``stream_options.include_usage`` (token counts come only from usage).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import msgspec

from benchmarks.loadgen.sse import SseDecoder
from benchmarks.loadgen.timeline import Outcome, StreamTimeline
from benchmarks.workloads.spec import RequestSpec

Api = Literal["completions", "chat"]
_PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def endpoint_url(base_url: str, api: Api) -> str:
    """``base_url`` may be a server root, a ``.../v1`` root or already the endpoint itself."""
    url = base_url.rstrip("/")
    if url.endswith("/completions"):
        return url
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url + _PATHS[api]


def build_body(spec: RequestSpec, *, model: str, api: Api, stream: bool, ignore_eos: bool,
               extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": spec.max_tokens, "stream": stream}
    if api == "chat":
        body["messages"] = [message.to_json() for message in spec.as_messages()]
    else:
        body["prompt"] = spec.as_prompt()
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return body


@dataclass
class Response:
    start: float
    outcome: Outcome
    headers: dict[str, str]


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], *,
               stream: bool, capture_headers: Sequence[str] = ()) -> Response:
    captured: dict[str, str] = {}
    start = time.perf_counter()
    timeline = StreamTimeline(start)
    try:
        async with session.post(url, data=body, headers=headers) as response:
            timeline.http_status = response.status
            captured = {name: response.headers[name] for name in capture_headers if name in response.headers}
            if response.status != 200:
                timeline.fail(f"HTTP {response.status}: {_error_message(await response.read())}")
            elif stream:
                decoder = SseDecoder()
                async for chunk in response.content.iter_any():
                    at = time.perf_counter()
                    for data in decoder.feed(chunk):
                        _on_data(timeline, at, data)
                for data in decoder.flush():
                    _on_data(timeline, time.perf_counter(), data)
            else:
                raw = await response.read()
                timeline.on_response(time.perf_counter(), _decode(raw))
    except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError) as exc:
        timeline.fail(f"{type(exc).__name__}: {exc}")
    return Response(start, timeline.outcome(), captured)


def _on_data(timeline: StreamTimeline, at: float, data: str) -> None:
    if data == "[DONE]":
        timeline.on_payload(at, data, None)
        return
    try:
        payload = _decode(data)
    except msgspec.DecodeError:
        timeline.fail(f"invalid JSON in SSE event: {data[:200]!r}")
        return
    timeline.on_payload(at, data, payload)


def _decode(data: str | bytes) -> Any:
    return msgspec.json.decode(data)


def _error_message(raw: bytes) -> str:
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw[:300].decode("utf-8", errors="replace")
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:300]
        return str(error)[:300]
    return str(payload)[:300]
