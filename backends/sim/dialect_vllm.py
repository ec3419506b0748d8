"""The vLLM dialect of the simulated engine: vLLM 0.32's OpenAI-compatible server surface.

POST /v1/completions, POST /v1/chat/completions (stream or not; ``stream_options.include_usage`` and
``continuous_usage_stats``), GET /v1/models, GET /health (200, empty body; 503 when unhealthy),
GET /version, POST /tokenize, GET /load, GET /metrics. Stop strings are cut from the output and held
back while streaming (up to the longest stop string minus one character), as vLLM does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from backends.sim.context import VLLM_VERSION, SimContext
from backends.sim.faults import HEADER, DropConnection, FaultSyntaxError, InjectedStreamError
from backends.sim.http_common import (
    BadJSON,
    Generation,
    drop_connection,
    generation,
    json_response,
    pump,
    read_json,
    start_sse,
)
from backends.sim.metrics_vllm import VllmMetrics
from backends.sim.request import SimRequest
from backends.sim.textgen import VOCAB_INDEX
from backends.sim.tokenizer import token_id, tokenize
from backends.sim.vllm_protocol import VllmError, VllmRequest, json_error, parse_request, status_error
from backends.sim.vllm_responses import (
    DONE,
    ChunkWriter,
    chat_body,
    completion_body,
    error_event,
    models_body,
)

Batches = AsyncIterator[tuple[list[str], bool]]

_INJECTED = "Simulated engine failure during generation."


class VllmDialect:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self._metrics = VllmMetrics(ctx)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/version", self.version),
            web.post("/tokenize", self.tokenize),
            web.get("/load", self.load),
            web.get("/metrics", self.metrics),
        ]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request,
                        kind: Literal["completion", "chat"]) -> web.StreamResponse:
        ctx = self.ctx
        try:
            try:
                body = await read_json(request)
            except BadJSON as exc:
                raise json_error(exc.msg, exc.pos) from None
            parsed = parse_request(kind, body, ctx.model, ctx.config.engine.max_model_len)
            try:
                faults = ctx.faults.for_request(request.headers.get(HEADER))
            except FaultSyntaxError as exc:
                raise VllmError(400, f"bad {HEADER} header: {exc}", "BadRequestError", HEADER) from None
            if faults.status is not None:
                raise status_error(faults.status, f"Simulated failure (status {faults.status}).")
        except VllmError as exc:
            return json_response(exc.body(), exc.status)
        ctx.in_flight += 1
        try:
            async with generation(ctx.engine, parsed.tokens, parsed.params, faults) as gen:
                if parsed.stream:
                    return await self._stream(request, parsed, gen)
                return await self._whole(request, parsed, gen.request, gen.batches)
        finally:
            ctx.in_flight -= 1

    async def _whole(self, request: web.Request, parsed: VllmRequest, sim: SimRequest,
                     batches: Batches) -> web.StreamResponse:
        try:
            async for _batch in batches:
                pass
        except DropConnection:
            drop_connection(request)
            return web.Response(status=500)
        except InjectedStreamError:
            return json_response(status_error(500, _INJECTED).body(), 500)
        build = chat_body if parsed.kind == "chat" else completion_body
        return json_response(build(sim, self.ctx.model, sim.output_text()))

    async def _stream(self, request: web.Request, parsed: VllmRequest,
                      gen: Generation) -> web.StreamResponse:
        writer = ChunkWriter(parsed.kind == "chat", self.ctx.model, parsed.include_usage)
        response = await start_sse(request, "text/event-stream; charset=utf-8")
        try:
            if parsed.kind == "chat":
                await response.write(writer.role_chunk())
            await pump(request, response, gen, _StreamFormat(writer, parsed, gen.request))
            await response.write_eof()
        except DropConnection:
            drop_connection(request)
        except InjectedStreamError:
            await response.write(error_event(status_error(500, _INJECTED).body()))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; leaving the generation context aborts the request
        return response

    async def models(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        return json_response(models_body(ctx.model, ctx.started, ctx.config.engine.max_model_len))

    async def health(self, request: web.Request) -> web.Response:
        if self.ctx.faults.unhealthy or self.ctx.engine.dead:
            return web.Response(status=503)
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": VLLM_VERSION})

    async def load(self, request: web.Request) -> web.Response:
        return json_response({"server_load": self.ctx.in_flight})

    async def tokenize(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        try:
            try:
                body = await read_json(request)
            except BadJSON as exc:
                raise json_error(exc.msg, exc.pos) from None
            kind: Literal["completion", "chat"] = \
                "chat" if isinstance(body, dict) and "messages" in body else "completion"
            if isinstance(body, dict) and kind == "chat" and "add_generation_prompt" not in body \
                    and not body.get("continue_final_message"):
                body = {**body, "add_generation_prompt": True}
            parsed = parse_request(kind, body, ctx.model, 1 << 30)
        except VllmError as exc:
            return json_response(exc.body(), exc.status)
        tokens = parsed.tokens
        if kind == "completion" and isinstance(body, dict) and body.get("add_special_tokens") is False:
            tokens = tokenize("".join(tokens[1:]))
        return json_response({"count": len(tokens), "max_model_len": ctx.config.engine.max_model_len,
                              "tokens": [token_id(t, VOCAB_INDEX) for t in tokens], "token_strs": None})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _StreamFormat:
    """The bytes of one vLLM stream, batch by batch: one chunk per token, the finish chunk (on its own
    after an EOS), then the usage chunk when asked and ``[DONE]``."""

    def __init__(self, writer: ChunkWriter, parsed: VllmRequest, sim: SimRequest) -> None:
        self.writer, self.parsed, self.sim = writer, parsed, sim
        self.visible = _VisibleText(sim)

    def __call__(self, batch: list[str], done: bool) -> bytes:
        sim = self.sim
        separate_finish = done and (sim.eos or not batch)
        last = len(batch) - 1
        parts = [self._chunk(self.visible.add(token, done and i == last),
                             done and i == last and not separate_finish)
                 for i, token in enumerate(batch)]
        if separate_finish:
            parts.append(self._chunk(self.visible.rest(), True))
        if done:
            if self.parsed.include_usage:
                parts.append(self.writer.usage_chunk(sim))
            parts.append(DONE)
        return b"".join(parts)

    def _chunk(self, delta: str, final: bool) -> bytes:
        sim = self.sim
        usage = None
        if self.parsed.continuous_usage:
            usage = {"prompt_tokens": sim.num_prompt_tokens,
                     "total_tokens": sim.num_prompt_tokens + sim.num_output_tokens,
                     "completion_tokens": sim.num_output_tokens}
        if final:
            return self.writer.finish_chunk(delta, sim, usage)
        return self.writer.token_chunk(delta, usage)


class _VisibleText:
    """What the client may see of the output so far: vLLM holds back the last ``longest stop - 1``
    characters while stop strings are pending and cuts the text at the stop string that matched."""

    def __init__(self, sim: SimRequest) -> None:
        self.sim = sim
        stops = sim.params.stop
        self.tracking = bool(stops)
        cut = stops and not sim.params.include_stop_str_in_output
        self.holdback = max(len(s) for s in stops) - 1 if cut else 0
        self.text = ""
        self.emitted = 0

    def add(self, token: str, final: bool) -> str:
        if not self.tracking:
            return token
        self.text += token
        limit = len(self.text) - (0 if final else self.holdback)
        if final and self.sim.visible_chars is not None:
            limit = self.sim.visible_chars
        return self._take(limit)

    def rest(self) -> str:
        if not self.tracking:
            return ""
        limit = self.sim.visible_chars if self.sim.visible_chars is not None else len(self.text)
        return self._take(limit)

    def _take(self, limit: int) -> str:
        limit = max(limit, self.emitted)
        delta = self.text[self.emitted:limit]
        self.emitted = limit
        return delta
