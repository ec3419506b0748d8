"""The pipeline-cost benchmark's variants add one part at a time: each config validates as the gateway
reads it, and differs from the one before by exactly the part it names."""

from __future__ import annotations

import pytest

from benchmarks.pipeline_cost import VARIANTS, summarize, variant_config
from gateway.settings import GatewaySettings

ENGINE = "http://127.0.0.1:9"


def settings_of(variant: str) -> tuple[GatewaySettings, str | None]:
    config, key = variant_config(variant, ENGINE, "bench-test:")
    return GatewaySettings.model_validate(config), key


def test_each_variant_adds_the_part_it_names() -> None:
    off, off_key = settings_of("off")
    assert off_key is None and not off.tenancy.auth_enabled and off.routing.default_policy == "round_robin"

    keys, key = settings_of("keys+routing")
    assert key is not None and keys.tenancy.auth_enabled and keys.routing.default_policy == "prefix_affinity"
    assert keys.tenancy.store == "memory"
    (tenant,) = keys.tenancy.tenants
    assert tenant.limits.requests_per_minute is None and tenant.limits.tokens_per_minute is None

    memory, _ = settings_of("+memory limits")
    assert memory.tenancy.store == "memory"
    (limited,) = memory.tenancy.tenants
    assert limited.limits.requests_per_minute and limited.limits.tokens_per_minute

    full, _ = settings_of("full")
    assert full.tenancy.store == "redis" and full.tenancy.speculative_admission
    assert full.tenancy.tenants[0].limits == limited.limits
    assert [v.routing.default_policy for v in (keys, memory, full)] == ["prefix_affinity"] * 3

    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("fast", ENGINE, "p:")


def test_summary_is_per_variant_and_connection_count() -> None:
    rows = [{"variant": v, "connections": c, "gateway_cpu_ms_per_request": 0.1 * (i + 1) + r / 100,
             "added_p50_ms": 0.2, "requests_per_s": 1000.0, "failed": 0}
            for i, v in enumerate(VARIANTS) for c in (1, 64) for r in range(3)]
    summary = summarize(rows, [1, 64])
    assert len(summary) == 2 * len(VARIANTS)
    full = summary["full c=64"]
    assert full["gateway_cpu_ms_per_request_median"] == pytest.approx(0.41)
    assert full["gateway_cpu_ms_per_request_range"] == pytest.approx([0.40, 0.42])
