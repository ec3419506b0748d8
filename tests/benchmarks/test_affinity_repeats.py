"""benchmarks/affinity/repeats.py: kill-test runs grouped by the studied options each used (recorded
override, the policy default, or stated as ``FILE=SPEC``) and victim rule, with mean, min and max."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.affinity.repeats import main, parse_stated


def run_document(kept: dict[str, float], options: dict[str, float] | None) -> dict[str, Any]:
    overrides = {} if options is None else {"routing": {"options": {"prefix_affinity": options}}}
    kills = [{"victim_rule": victim, "killed": "engine-1", "failed": 0, "hit_rate_before_mean": 0.86,
              "hit_rate_after_mean": 0.84,
              "tenant_moves": {"tenants_on_survivors_moved": 1, "tenants_on_survivors": 10,
                               "survivor_tenant_requests_on_a_previous_engine": share - 0.05,
                               "survivor_tenant_requests_kept_beyond_killed_share": share},
              "baseline_moves_without_kill": {"survivor_tenant_requests_on_a_previous_engine": 0.97}}
             for victim, share in kept.items()]
    return {"command": ["run"], "created": "now", "settings": {"gateway_overrides": overrides},
            "kills": kills}


def test_runs_are_grouped_by_the_studied_options_and_victim(tmp_path: Path) -> None:
    files = {"default.json": run_document({"hottest": 0.80, "other": 0.98}, None),
             "default2.json": run_document({"hottest": 0.90, "other": 0.96}, None),
             "four.json": run_document({"hottest": 0.95}, {"bound_min_load": 4.0}),
             "off.json": run_document({"hottest": 0.85}, {"hot_share": 0.0}),
             "old.json": run_document({"other": 0.88}, None)}
    for name, document in files.items():
        (tmp_path / name).write_text(json.dumps(document))
    out = tmp_path / "repeats.json"
    args = [str(tmp_path / name) for name in ("default.json", "default2.json", "four.json", "off.json")]
    args += [f"{tmp_path / 'old.json'}=bound_min_load:0,hot_share:0", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(out.read_text())["summary"]
    default = summary["bound_min_load 8, hot_share 0.5, hottest"]
    assert default["runs"] == 2 and default["mean"] == pytest.approx(0.85)
    assert default["nothing_free_to_move"]["mean"] == pytest.approx(0.80)
    assert default["without_kill"]["mean"] == pytest.approx(0.97)
    assert summary["bound_min_load 8, hot_share 0.5, other"]["min"] == 0.96
    assert summary["bound_min_load 4, hot_share 0.5, hottest"]["runs"] == 1
    assert summary["bound_min_load 8, hot_share 0, hottest"]["mean"] == 0.85
    assert summary["bound_min_load 0, hot_share 0, other"]["runs"] == 1, "stated, not the defaults"


def test_stated_specs() -> None:
    assert parse_stated("") == {} and parse_stated("4") == {"bound_min_load": 4.0}
    assert parse_stated("hot_share:0,bound_min_load:2") == {"hot_share": 0.0, "bound_min_load": 2.0}
    with pytest.raises(SystemExit):
        parse_stated("w_miss:3")


def test_longer_kill_runs_are_summarized_apart_with_the_tenants_that_moved(tmp_path: Path) -> None:
    short = run_document({"hottest": 0.90}, None)
    long = run_document({"hottest": 0.96}, None)
    long["settings"]["kill"] = {"before_s": 60.0, "after_s": 60.0}
    long["kills"][0]["baseline_moves_without_kill"].update(tenants_on_survivors_moved=3,
                                                            tenants_on_survivors=12)
    second = json.loads(json.dumps(long))
    second["kills"][0]["tenant_moves"]["tenants_on_survivors_moved"] = 0
    for name, document in {"short.json": short, "long.json": long, "long2.json": second}.items():
        (tmp_path / name).write_text(json.dumps(document))
    out = tmp_path / "repeats.json"
    assert main([str(tmp_path / name) for name in ("short.json", "long.json", "long2.json")]
                + ["--out", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["bound_min_load 8, hot_share 0.5, hottest"]["runs"] == 1
    assert "survivor_tenants_moved" not in summary["bound_min_load 8, hot_share 0.5, hottest"]
    pooled = summary["bound_min_load 8, hot_share 0.5, kill 60 s + 60 s, hottest"]
    assert pooled["runs"] == 2 and pooled["mean"] == pytest.approx(0.96)
    assert pooled["survivor_tenants_moved"] == {"moved": 1, "compared": 20, "fraction": 0.05}
    assert pooled["survivor_tenants_moved_without_kill"] == {"moved": 6, "compared": 24, "fraction": 0.25}
