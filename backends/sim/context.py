"""The simulated server's configuration and the per-server state its HTTP handlers share.

One ``SimContext`` per server (no module-level state): the engine, the process fault state, the
dialect, counters of requests in flight. Tests may build many servers in one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from backends.sim.engine import Engine
from backends.sim.faults import FaultSpec, ProcessFaults
from backends.sim.profiles import DEFAULT_PROFILE, PROFILES, EngineConfig

Dialect = Literal["vllm", "tgi"]
VLLM_VERSION = "0.32.0"
TGI_VERSION = "3.3.6"


@dataclass(frozen=True)
class SimConfig:
    dialect: Dialect = "vllm"
    model: str = "sim-model"
    host: str = "127.0.0.1"
    port: int = 8000
    profile: str = DEFAULT_PROFILE
    engine: EngineConfig = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    # TGI's router refuses (429) beyond this many requests in flight.
    max_concurrent_requests: int = 128
    max_stop_sequences: int = 4
    fault: FaultSpec | None = None
    fault_count: int | None = None
    unhealthy: bool = False


class SimContext:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = Engine(config.engine)
        self.faults = ProcessFaults(config.fault, config.fault_count, config.unhealthy)
        self.started = int(time.time())
        self.in_flight = 0

    @property
    def model(self) -> str:
        return self.config.model
