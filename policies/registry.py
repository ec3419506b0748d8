"""Policies by name: what the composition root calls to build a model's policy from config.

``build_policy(name, options)`` validates the options (unknown names, wrong types and out-of-range values
raise ``ValueError`` naming the option), so a bad config is refused at load time, never mid-request.
``DECISION_BRANCHES`` lists every ``Ranking.branch`` value, for pre-creating bounded metric label sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from policies.base import RoutingPolicy
from policies.least_loaded import LEAST_LOADED, LeastLoaded, LeastLoadedConfig
from policies.prefix_affinity import COLD, FALLBACK, HIT, KEY, SPILL, PrefixAffinity, PrefixAffinityConfig
from policies.round_robin import ROUND_ROBIN, RoundRobin

POLICY_NAMES = (ROUND_ROBIN, LEAST_LOADED, "prefix_affinity")
DEFAULT_POLICY = "prefix_affinity"
DECISION_BRANCHES = (HIT, COLD, SPILL, KEY, FALLBACK, ROUND_ROBIN, LEAST_LOADED)

_Config = TypeVar("_Config")


def build_policy(name: str, options: Mapping[str, object] | None = None) -> RoutingPolicy:
    """A fresh policy instance (policies keep per-instance state: build one per model)."""
    options = options or {}
    if name == ROUND_ROBIN:
        _options(RoundRobinOptions, name, options)
        return RoundRobin()
    if name == LEAST_LOADED:
        return LeastLoaded(_options(LeastLoadedConfig, name, options))
    if name == "prefix_affinity":
        return PrefixAffinity(_options(PrefixAffinityConfig, name, options))
    raise ValueError(f"unknown routing policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


@dataclasses.dataclass(frozen=True, slots=True)
class RoundRobinOptions:
    """``round_robin`` takes no options (weights come from each backend's config)."""


def _options(config_type: type[_Config], policy: str, options: Mapping[str, object]) -> _Config:
    fields = {field.name: field for field in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in options.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"{policy}: unknown option {key!r} (known: {known})")
        values[key] = _coerce(policy, key, value, type(field.default))
    try:
        return config_type(**values)
    except ValueError as error:
        raise ValueError(f"{policy}: {error}") from None


def _coerce(policy: str, key: str, value: object, expected: type) -> object:
    if isinstance(value, bool):
        raise ValueError(f"{policy}: option {key!r} must be a number, got {value!r}")
    if expected is float and isinstance(value, int | float):
        return float(value)
    if expected is int and isinstance(value, int):
        return value
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{policy}: option {key!r} must be {expected.__name__}, got {value!r}")
