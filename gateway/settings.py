"""Gateway configuration: the YAML file's schema (pydantic), loading, and error paths like
``backends[1].url`` for anything invalid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.tenancy.config import TenancyConfig

BackendKind = Literal["vllm", "tgi", "sim"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimLaunch(_Strict):
    """A simulated engine: its dialect, and how to start it as a local subprocess when the backend
    has no ``url`` (the embedded default)."""

    dialect: Literal["vllm", "tgi"] = "vllm"
    profile: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    args: list[str] = Field(default_factory=list)


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: BackendKind
    url: str | None = Field(default=None, pattern=r"^https?://", validate_default=True)
    models: list[str] = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    sim: SimLaunch | None = None
    # Prefix-index sizing when the engine does not report its cache geometry (TGI).
    cache_blocks: int | None = Field(default=None, gt=0)
    block_size: int | None = Field(default=None, gt=0)

    @field_validator("url")
    @classmethod
    def _url_needed(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None and info.data.get("kind") in ("vllm", "tgi"):
            raise ValueError("required for a vllm or tgi backend")
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _url_or_launch(self) -> BackendConfig:
        if self.url is None and self.sim is None:
            object.__setattr__(self, "sim", SimLaunch())
        return self

    @property
    def dialect(self) -> Literal["vllm", "tgi"]:
        if self.kind == "sim":
            return self.sim.dialect if self.sim is not None else "vllm"
        return self.kind


class TimeoutSettings(_Strict):
    connect_s: float = Field(default=2.0, gt=0)
    first_token_s: float = Field(default=60.0, gt=0)
    idle_s: float = Field(default=60.0, gt=0)
    probe_s: float = Field(default=2.0, gt=0)
    # A non-stream request sent to the engine whole: its whole answer, generation included.
    whole_s: float = Field(default=600.0, gt=0)


class HealthSettings(_Strict):
    interval_s: float = Field(default=2.0, gt=0)
    failures_to_open: int = Field(default=3, ge=1)


class RoutingSettings(_Strict):
    default_policy: str = "prefix_affinity"
    per_model: dict[str, str] = Field(default_factory=dict)
    # Options per policy name, e.g. {prefix_affinity: {load_bound: 1.25}}.
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    default_model: str | None = None
    log_level: str = "info"
    # Worker processes sharing the listening socket (``serve --workers`` overrides); see gateway/workers.py.
    workers: int = Field(default=1, ge=1, le=64)


class GatewaySettings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    backends: list[BackendConfig] = Field(min_length=1)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    # The HTTP client towards the engines; benchmarks/http_clients.py measured both.
    upstream_client: Literal["aiohttp", "http1"] = "http1"
    # Non-stream client requests: "whole" (one non-stream engine request; less than half the gateway's
    # CPU per request) or "streamed" (streamed upstream and gathered: idle deadline and TTFT per event).
    non_stream_upstream: Literal["whole", "streamed"] = "whole"
    health: HealthSettings = Field(default_factory=HealthSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewaySettings:
        seen: set[str] = set()
        for backend in self.backends:
            if backend.name in seen:
                raise ValueError(f"duplicate backend name {backend.name!r}")
            seen.add(backend.name)
        if self.server.default_model is not None and self.server.default_model not in self.model_names:
            raise ValueError(f"default_model {self.server.default_model!r} is served by no backend")
        return self

    @property
    def model_names(self) -> list[str]:
        names: list[str] = []
        for backend in self.backends:
            names.extend(m for m in backend.models if m not in names)
        return names

    @property
    def default_model(self) -> str:
        return self.server.default_model or self.model_names[0]


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending path."""


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def parse_settings(data: Any) -> GatewaySettings:
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def load_settings(path: str | Path) -> GatewaySettings:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return parse_settings(data if data is not None else {})


def embedded_defaults() -> GatewaySettings:
    """Two simulated engines (vLLM and TGI dialects) serving one model; limits in memory. Round robin,
    so that a newcomer's first requests exercise both dialects."""
    return parse_settings({
        "routing": {"default_policy": "round_robin"},
        "backends": [
            {"name": "sim-vllm", "kind": "sim", "models": ["sim-model"], "sim": {"dialect": "vllm"}},
            {"name": "sim-tgi", "kind": "sim", "models": ["sim-model"], "sim": {"dialect": "tgi"}},
        ],
    })
