"""Background health monitor: probes each backend's health endpoint and scrapes its metrics into the
registry's load snapshot; consecutive failures open the breaker, a good probe closes it."""

from __future__ import annotations

import asyncio
import logging

from gateway.registry import Backend, Registry

log = logging.getLogger("gateway.health")


class HealthMonitor:
    def __init__(self, registry: Registry, interval_s: float) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def probe(self, backend: Backend) -> None:
        try:
            healthy = await backend.adapter.health()
        except Exception:  # a probe must never kill the monitor
            healthy = False
        if not healthy:
            was_open = backend.breaker_open
            backend.record_failure()
            if backend.breaker_open and not was_open:
                log.warning("backend %s unhealthy: breaker open", backend.name)
            return
        if backend.breaker_open:
            log.info("backend %s healthy again: breaker closed", backend.name)
        backend.record_success()
        try:
            backend.load = await backend.adapter.load()
            backend.scraped = True
        except Exception as exc:
            log.debug("metrics scrape of %s failed: %s", backend.name, exc)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self._registry))

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
