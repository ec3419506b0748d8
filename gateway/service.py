"""The running gateway: the pieces the HTTP edge calls (registry, forwarder, metrics, health monitor)
and their lifecycle. Built by the composition root, which decides the concrete adapters and policies."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from gateway.forwarder import Forwarder
from gateway.health import HealthMonitor
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.registry import Registry
from gateway.settings import GatewaySettings
from gateway.tenancy import Admission


@dataclass
class Gateway:
    settings: GatewaySettings
    registry: Registry
    forwarder: Forwarder
    metrics: GatewayMetrics
    prometheus: CollectorRegistry
    monitor: HealthMonitor
    admission: Admission
    pipeline: Pipeline
    started_at: int = field(default_factory=lambda: int(time.time()))
    # Resources to release at shutdown (HTTP sessions, adapters), in order.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        await self.monitor.probe_all()
        self.monitor.start()

    async def stop(self) -> None:
        await self.monitor.stop()
        for close in self.closers:
            await close()
