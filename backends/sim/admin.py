"""The simulator's own admin endpoints (both dialects), outside any real engine's surface:

- ``GET /sim/faults``, ``POST /sim/faults``, ``DELETE /sim/faults``: the process fault state (grammar in
  ``faults``); ``{"exit": true}`` answers, then ends the process with ``os._exit(1)``.
- ``GET /sim/state``: scheduler and cache numbers as JSON (running, waiting, cache usage, blocks...).
- ``POST /sim/reset_prefix_cache``: forget every cached block that no request holds.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from backends.sim.context import SimContext
from backends.sim.faults import FaultSyntaxError, spec_from_json
from backends.sim.http_common import BadJSON, encode, json_response, read_json


class AdminRoutes:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/sim/faults", self.get_faults),
            web.post("/sim/faults", self.set_faults),
            web.delete("/sim/faults", self.clear_faults),
            web.get("/sim/state", self.state),
            web.post("/sim/reset_prefix_cache", self.reset_prefix_cache),
        ]

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.ctx.faults.to_json())

    async def set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise FaultSyntaxError("the body must be a JSON object")
            spec = spec_from_json(body)
            count = body.get("count")
            if count is not None and (not isinstance(count, int) or count < 0):
                raise FaultSyntaxError("count must be a non-negative integer")
        except (BadJSON, FaultSyntaxError) as exc:
            return json_response({"error": str(exc)}, 400)
        faults = self.ctx.faults
        faults.clear()
        faults.spec = None if spec.empty else spec
        faults.remaining = count
        faults.unhealthy = bool(body.get("unhealthy"))
        if body.get("exit"):
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(encode({"exiting": True}))
            await response.write_eof()
            asyncio.get_running_loop().call_soon(os._exit, 1)
            return response
        return json_response(faults.to_json())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.ctx.faults.clear()
        return json_response(self.ctx.faults.to_json())

    async def state(self, request: web.Request) -> web.Response:
        return json_response({**self.ctx.engine.state(), "in_flight": self.ctx.in_flight,
                              "dialect": self.ctx.config.dialect, "profile": self.ctx.config.profile})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        forgotten = self.ctx.engine.scheduler.cache.reset_prefix_cache()
        return json_response({"forgotten_blocks": forgotten})
