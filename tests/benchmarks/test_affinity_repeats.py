"""benchmarks/affinity/repeats.py: kill-test runs grouped by the bound_min_load each used (recorded
override, the policy default, or stated as ``FILE=N``) and victim rule, with mean, min and max."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.affinity.repeats import main


def run_document(kept: dict[str, float], bound: float | None) -> dict[str, Any]:
    options = {"prefix_affinity": {"bound_min_load": bound}}
    overrides = {} if bound is None else {"routing": {"options": options}}
    kills = [{"victim_rule": victim, "killed": "engine-1", "failed": 0, "hit_rate_before_mean": 0.86,
              "hit_rate_after_mean": 0.84,
              "tenant_moves": {"tenants_on_survivors_moved": 1, "tenants_on_survivors": 10,
                               "survivor_tenant_requests_on_a_previous_engine": share},
              "baseline_moves_without_kill": {"survivor_tenant_requests_on_a_previous_engine": 0.97}}
             for victim, share in kept.items()]
    return {"command": ["run"], "created": "now", "settings": {"gateway_overrides": overrides},
            "kills": kills}


def test_runs_are_grouped_by_bound_and_victim(tmp_path: Path) -> None:
    files = {"default.json": run_document({"hottest": 0.80, "other": 0.98}, None),
             "default2.json": run_document({"hottest": 0.90, "other": 0.96}, None),
             "four.json": run_document({"hottest": 0.95}, 4.0),
             "old.json": run_document({"other": 0.88}, None)}
    for name, document in files.items():
        (tmp_path / name).write_text(json.dumps(document))
    out = tmp_path / "repeats.json"
    args = [str(tmp_path / "default.json"), str(tmp_path / "default2.json"), str(tmp_path / "four.json"),
            f"{tmp_path / 'old.json'}=0", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["bound_min_load 8, hottest"]["runs"] == 2
    assert abs(summary["bound_min_load 8, hottest"]["mean"] - 0.85) < 1e-9
    assert summary["bound_min_load 8, other"]["min"] == 0.96
    assert summary["bound_min_load 4, hottest"] == {"runs": 1, "mean": 0.95, "min": 0.95, "max": 0.95}
    assert summary["bound_min_load 0, other"]["runs"] == 1, "the stated bound, not the default"
