"""The simulated engine's aiohttp application: a factory from ``SimConfig`` and ways to run it.

``create_app`` builds a self-contained server (its own engine, registry and fault state), ``start``
runs one inside an existing event loop (the embedded backend, tests) and returns a handle to stop it,
``run`` is the blocking entry point of ``python -m backends.sim`` (uvloop when installed). Handlers are
cancelled when their client disconnects, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from backends.sim.admin import AdminRoutes
from backends.sim.context import SimConfig, SimContext
from backends.sim.dialect_tgi import TgiDialect
from backends.sim.dialect_vllm import VllmDialect

CONTEXT_KEY = web.AppKey("sim_context", SimContext)
_MAX_BODY = 64 * 1024 * 1024
log = logging.getLogger(__name__)


def create_app(config: SimConfig) -> web.Application:
    ctx = SimContext(config)
    app = web.Application(client_max_size=_MAX_BODY)
    app[CONTEXT_KEY] = ctx
    dialect = VllmDialect(ctx) if config.dialect == "vllm" else TgiDialect(ctx)
    app.add_routes(dialect.routes())
    app.add_routes(AdminRoutes(ctx).routes())

    async def start_engine(_app: web.Application) -> None:
        await ctx.engine.start()

    async def stop_engine(_app: web.Application) -> None:
        await ctx.engine.stop()

    app.on_startup.append(start_engine)
    app.on_cleanup.append(stop_engine)
    return app


@dataclass
class RunningSim:
    runner: web.AppRunner
    url: str

    @property
    def context(self) -> SimContext:
        return self.runner.app[CONTEXT_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(config: SimConfig) -> RunningSim:
    """Serve ``config`` on its host/port (port 0: any free one) in the running loop."""
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048)
    await site.start()
    sockets = runner.addresses
    port = sockets[0][1] if sockets else config.port
    return RunningSim(runner, f"http://{config.host}:{port}")


async def _serve_forever(config: SimConfig) -> None:
    sim = await start(config)
    log.info("sim engine (%s dialect, profile %s, model %s) on %s", config.dialect, config.profile,
             config.model, sim.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(config: SimConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        asyncio.run(_serve_forever(config))
        return
    uvloop.run(_serve_forever(config))
