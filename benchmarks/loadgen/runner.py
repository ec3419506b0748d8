"""``run_load``: send a workload to an OpenAI-compatible URL under an arrival process and record
every request.

One ``aiohttp.ClientSession`` whose connector allows ``max_concurrency`` connections (unlimited
without a cap). Requests are released at their arrival offsets (open loop) and then wait for a
concurrency slot (closed loop when ``rate`` is inf), as ``vllm bench serve`` does. The run's
duration runs from just before the first release to the end of the last request.

Multi-turn sessions (``session_history="actual"``, the default): a turn waits for the previous turn
of its session to finish (before taking a concurrency slot, so this cannot deadlock) and is sent with
the assistant text actually generated so far in place of the workload's synthetic replies (kept
where an earlier turn failed). ``"synthetic"`` sends the specs exactly as generated, with no waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec

from benchmarks.loadgen.arrivals import ArrivalProcess
from benchmarks.loadgen.client import Api, build_body, endpoint_url, post
from benchmarks.loadgen.metrics import aggregate
from benchmarks.loadgen.records import RequestRecord
from benchmarks.workloads.spec import RequestSpec

SessionHistory = Literal["actual", "synthetic"]


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration: float
    started_at: float
    settings: dict[str, Any] = field(default_factory=dict)
    perf_origin: float = 0.0  # time.perf_counter() at the run's start; record times are relative to it

    def aggregate(self, slos: Mapping[str, float] | None = None) -> dict[str, Any]:
        return aggregate(self.records, self.duration, slos)


class _SessionBook:
    """Completion events and generated replies of every session turn of one run."""

    def __init__(self, specs: Sequence[RequestSpec]) -> None:
        self._present = {(s.session, s.turn) for s in specs if s.session is not None}
        self._done: dict[tuple[str, int], asyncio.Event] = {}
        self._replies: dict[str, dict[int, str]] = {}

    def _event(self, key: tuple[str, int]) -> asyncio.Event:
        return self._done.setdefault(key, asyncio.Event())

    async def with_history(self, spec: RequestSpec) -> RequestSpec:
        if spec.session is None or (spec.session, spec.turn - 1) not in self._present:
            return spec
        await self._event((spec.session, spec.turn - 1)).wait()
        return spec.with_assistant_replies(self._replies.get(spec.session, {}))

    def finished(self, spec: RequestSpec, record: RequestRecord, text: str) -> None:
        if spec.session is None:
            return
        if record.success:
            self._replies.setdefault(spec.session, {})[spec.turn] = text
        self._event((spec.session, spec.turn)).set()


async def run_load(
    url: str,
    workload: Iterable[RequestSpec],
    arrival: ArrivalProcess,
    *,
    model: str,
    api: Api = "completions",
    stream: bool = True,
    ignore_eos: bool = False,
    extra_body: Mapping[str, Any] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    api_key: str | None = None,
    capture_headers: Sequence[str] = (),
    session_history: SessionHistory = "actual",
    keep_text: bool = False,
    request_timeout_s: float = 600.0,
    on_progress: Callable[[RequestRecord], None] | None = None,
) -> RunResult:
    specs = list(workload)
    offsets = arrival.offsets(specs)
    endpoint = endpoint_url(url, api)
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    if key:
        headers.setdefault("Authorization", f"Bearer {key}")
    book = _SessionBook(specs) if session_history == "actual" else None
    limit = arrival.max_concurrency or 0
    slots = asyncio.Semaphore(arrival.max_concurrency) if arrival.max_concurrency else None
    encoder = msgspec.json.Encoder()

    async def one(spec: RequestSpec, released: float, t0: float,
                  session: aiohttp.ClientSession) -> RequestRecord:
        to_send = await book.with_history(spec) if book else spec
        body = encoder.encode(build_body(to_send, model=model, api=api, stream=stream,
                                         ignore_eos=ignore_eos, extra_body=extra_body))
        async with slots or contextlib.nullcontext():
            response = await post(session, endpoint, body, headers, stream=stream,
                                  capture_headers=capture_headers)
        outcome = response.outcome
        record = RequestRecord(
            index=spec.index, arrival=released - t0, start=response.start - t0, max_tokens=spec.max_tokens,
            success=outcome.success, error=outcome.error, http_status=outcome.http_status,
            ttft=outcome.ttft, itl=outcome.itl, e2el=outcome.e2el, prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens, cached_tokens=outcome.cached_tokens,
            tenant=spec.tenant, session=spec.session, turn=spec.turn, prompt_words=spec.prompt_words,
            headers=response.headers, text=outcome.text if keep_text else None)
        if book:
            book.finished(spec, record, outcome.text)
        if on_progress:
            on_progress(record)
        return record

    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started_at = time.time()
        t0 = time.perf_counter()
        tasks: list[asyncio.Task[RequestRecord]] = []
        for spec, offset in zip(specs, offsets, strict=True):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(spec, time.perf_counter(), t0, session)))
        records = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - t0
    settings = {"url": url, "endpoint": endpoint, "model": model, "api": api, "stream": stream,
                "ignore_eos": ignore_eos, "extra_body": dict(extra_body or {}),
                "extra_header_names": sorted(extra_headers or {}), "session_history": session_history,
                "num_requests": len(specs), "arrival": arrival.settings(),
                "request_timeout_s": request_timeout_s if math.isfinite(request_timeout_s) else None}
    return RunResult(records=records, duration=duration, started_at=started_at, settings=settings,
                     perf_origin=t0)
