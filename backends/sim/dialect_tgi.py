"""The TGI dialect of the simulated engine: TGI 3.x's router surface (reference/tgi-openapi.json).

POST /generate, POST /generate_stream, POST / (either, by ``stream``), POST /v1/chat/completions,
POST /v1/completions, GET /health (200 empty; 503 ``healthcheck`` error when unhealthy), GET /info,
GET /v1/models, GET /metrics, POST /tokenize. More than ``max_concurrent_requests`` generations in
flight is ``429 overloaded`` (inside a stream: an error event in a 200 response, as TGI does). Stop
sequences stay in the generated text, as in TGI.
"""

from __future__ import annotations

import time

from aiohttp import web

from backends.sim.context import SimContext
from backends.sim.engine import Engine
from backends.sim.faults import HEADER, DropConnection, FaultSpec, FaultSyntaxError, InjectedStreamError
from backends.sim.http_common import (
    BadJSON,
    FormatBatch,
    drop_connection,
    generation,
    json_response,
    pump,
    read_json,
    start_sse,
)
from backends.sim.metrics_tgi import render_tgi_metrics
from backends.sim.request import SimRequest
from backends.sim.textgen import VOCAB_INDEX
from backends.sim.tgi_protocol import (
    OVERLOADED,
    Limits,
    TgiError,
    TgiRejection,
    TgiRequest,
    generation_error,
    json_rejection,
    parse_generate,
    parse_openai,
    status_error,
)
from backends.sim.tgi_responses import (
    OpenAIChunks,
    error_event,
    generate_body,
    generated_text,
    info_body,
    openai_finish_reason,
    stream_details,
    stream_event,
)
from backends.sim.tokenizer import EOS, offsets, token_id

_INJECTED = "simulated engine failure"
_SSE_HEADERS = {"Cache-Control": "no-cache", "x-compute-type": "gpu+optimized"}


class TgiDialect:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        engine = ctx.config.engine
        self.limits = Limits(engine.max_model_len, engine.max_model_len - 1, ctx.config.max_stop_sequences)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/generate", self.generate),
            web.post("/generate_stream", self.generate_stream),
            web.post("/", self.compat),
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions", self.completions),
            web.get("/health", self.health),
            web.get("/info", self.info),
            web.get("/v1/models", self.models),
            web.get("/metrics", self.metrics),
            web.post("/tokenize", self.tokenize),
        ]

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "native", False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "native", True)

    async def compat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "native", None)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat", None)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "completion", None)

    async def _handle(self, request: web.Request, kind: str, stream: bool | None) -> web.StreamResponse:
        ctx = self.ctx
        ctx.engine.stats.requests_received += 1
        error: TgiError | None = None
        parsed: TgiRequest | None = None
        try:
            try:
                body = await read_json(request)
            except BadJSON as exc:
                raise json_rejection(exc) from None
            if stream is None:
                stream = bool(isinstance(body, dict) and body.get("stream"))
            try:
                parsed = parse_generate(body, self.limits, stream) if kind == "native" else \
                    parse_openai(body, self.limits, chat=kind == "chat")
            except TgiError as exc:
                error = exc
            faults = ctx.faults.for_request(request.headers.get(HEADER))
        except TgiRejection as exc:
            return web.Response(status=exc.status, text=exc.text)
        except FaultSyntaxError as exc:
            return json_response({"error": f"bad {HEADER} header: {exc}", "error_type": "validation"}, 422)
        if faults.status is not None:
            failure = status_error(faults.status, "Simulated failure")
            return json_response(failure.body(), failure.status)
        if ctx.in_flight >= ctx.config.max_concurrent_requests:
            error = OVERLOADED
        if error is None and parsed is not None and parsed.stream and parsed.decoder_input_details:
            error = TgiError(422, "`decoder_input_details` == true is not supported when streaming tokens",
                             "validation")
        if error is not None or parsed is None:
            failure = error or OVERLOADED
            ctx.engine.stats.count_failure(failure.error_type)
            if stream:
                response = await start_sse(request, "text/event-stream", _SSE_HEADERS)
                await response.write(error_event(failure.body()))
                await response.write_eof()
                return response
            return json_response(failure.body(), failure.status)
        ctx.in_flight += 1
        try:
            return await self._run(request, kind, parsed, faults)
        finally:
            ctx.in_flight -= 1

    async def _run(self, request: web.Request, kind: str, parsed: TgiRequest,
                   faults: FaultSpec) -> web.StreamResponse:
        started = time.monotonic()
        async with generation(self.ctx.engine, parsed.tokens, parsed.params, faults) as gen:
            if not parsed.stream:
                try:
                    async for _batch in gen.batches:
                        pass
                except DropConnection:
                    drop_connection(request)
                    return web.Response(status=500)
                except InjectedStreamError:
                    self.ctx.engine.stats.count_failure("generation")
                    failure = generation_error(_INJECTED)
                    return json_response(failure.body(), failure.status)
                if kind == "native":
                    prefix = parsed.inputs if parsed.return_full_text else ""
                    prefill = parsed.tokens if parsed.decoder_input_details else None
                    body = generate_body(gen.request, parsed.details, prefix, prefill)
                    return json_response(body, headers=self._timing_headers(gen.request, started))
                return json_response(OpenAIChunks(kind == "chat", self.ctx.model).whole(gen.request))
            response = await start_sse(request, "text/event-stream", _SSE_HEADERS)
            sim = gen.request
            format_batch: FormatBatch = _NativeFormat(parsed, sim) if kind == "native" else _OpenAIFormat(
                OpenAIChunks(kind == "chat", self.ctx.model), kind == "chat" and parsed.include_usage, sim)
            try:
                await pump(request, response, gen, format_batch)
                await response.write_eof()
            except DropConnection:
                drop_connection(request)
            except InjectedStreamError:
                self.ctx.engine.stats.count_failure("generation")
                await response.write(error_event(generation_error(_INJECTED).body()))
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client went away; leaving the generation context aborts the request
            return response

    @staticmethod
    def _timing_headers(sim: SimRequest, started: float) -> dict[str, str]:
        total = time.monotonic() - started
        queue = (sim.first_scheduled or sim.arrival) - sim.arrival
        inference = (sim.finished_at or sim.arrival) - (sim.first_scheduled or sim.arrival)
        per_token = inference / max(sim.num_output_tokens, 1)
        return {"x-compute-type": "gpu+optimized", "x-compute-time": f"{total:.6f}",
                "x-total-time": str(int(total * 1000)), "x-validation-time": "0",
                "x-queue-time": str(int(queue * 1000)), "x-inference-time": str(int(inference * 1000)),
                "x-time-per-token": str(int(per_token * 1000)), "x-prompt-tokens": str(sim.num_prompt_tokens),
                "x-generated-tokens": str(sim.num_output_tokens)}

    async def health(self, request: web.Request) -> web.Response:
        if self.ctx.faults.unhealthy or self.ctx.engine.dead:
            return json_response({"error": "unhealthy", "error_type": "healthcheck"}, 503)
        return web.Response(status=200)

    async def info(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        return json_response(info_body(ctx.model, ctx.config.max_concurrent_requests,
                                       self.limits.max_input_tokens,
                                       self.limits.max_total_tokens, self.limits.max_stop_sequences))

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.ctx.model, "object": "model", "created": self.ctx.started,
                "owned_by": self.ctx.model}
        return json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render_tgi_metrics(self.ctx), content_type="text/plain")

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
        except BadJSON as exc:
            rejection = json_rejection(exc)
            return web.Response(status=rejection.status, text=rejection.text)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return web.Response(status=422, text="Failed to deserialize the JSON body into the target type: "
                                                 "missing field `inputs`")
        tokens = Engine.completion_tokens(body["inputs"])
        spans = offsets(tokens[1:])
        result = [{"id": token_id(tokens[0], VOCAB_INDEX), "text": tokens[0], "start": 0, "stop": 0}]
        result += [{"id": token_id(t, VOCAB_INDEX), "text": t, "start": a, "stop": b}
                   for t, (a, b) in zip(tokens[1:], spans, strict=True)]
        return json_response(result)


class _NativeFormat:
    """``/generate_stream`` bytes: one event per token (the EOS as ``</s>``), the last one with
    ``generated_text`` and ``details``."""

    def __init__(self, parsed: TgiRequest, sim: SimRequest) -> None:
        self.parsed, self.sim = parsed, sim
        self.index = 0
        self.prefix = parsed.inputs if parsed.return_full_text else ""

    def __call__(self, batch: list[str], done: bool) -> bytes:
        sim = self.sim
        tokens = [*batch, EOS] if done and sim.eos else batch
        parts: list[bytes] = []
        for position, token in enumerate(tokens):
            self.index += 1
            final = None
            if done and position == len(tokens) - 1:
                final = {"generated_text": generated_text(sim, self.prefix),
                         "details": stream_details(sim) if self.parsed.details else None}
            parts.append(stream_event(self.index, token, final))
        return b"".join(parts)


class _OpenAIFormat:
    """Messages API stream bytes: a chunk per token, the finish chunk, the usage chunk, ``[DONE]``."""

    def __init__(self, chunks: OpenAIChunks, include_usage: bool, sim: SimRequest) -> None:
        self.chunks, self.include_usage, self.sim = chunks, include_usage, sim

    def __call__(self, batch: list[str], done: bool) -> bytes:
        sim = self.sim
        separate = done and (sim.eos or not batch)
        last = len(batch) - 1
        finish = openai_finish_reason(sim) if done else None
        parts = [self.chunks.chunk(token, finish if i == last and not separate else None)
                 for i, token in enumerate(batch)]
        if separate:
            parts.append(self.chunks.chunk("", finish))
        if done:
            if self.include_usage:
                parts.append(self.chunks.usage_chunk(sim))
            parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)
