"""benchmarks/affinity/targets.py, the kill test's two rows: by prefixes (the survivors' tenants that change
their main engine, against the same count without a kill, with a floor) and by requests (95% kept)."""

from __future__ import annotations

from typing import Any

from benchmarks.affinity.targets import SURVIVOR_MOVES_FLOOR, check_targets


def kill(moved: int, survivors: int, baseline_moved: int, baseline_survivors: int, kept: float,
         killed_moved: int = 4) -> dict[str, Any]:
    return {
        "victim_rule": "hottest", "killed": "engine-1",
        "hit_rate_before_mean": 0.86, "hit_rate_after_mean": 0.84,
        "tenant_moves": {
            "tenants_on_survivors_moved": moved, "tenants_on_survivors": survivors,
            "survivors_moved_fraction": moved / survivors, "tenants_on_killed_moved": killed_moved,
            "tenants_on_killed": 4, "moved_fraction_of_compared": 0.3, "killed_share_of_compared": 0.2,
            "survivor_tenant_requests_kept_beyond_killed_share": kept,
            "survivor_tenant_requests_on_a_previous_engine": kept - 0.01},
        "baseline_moves_without_kill": {
            "tenants_on_survivors_moved": baseline_moved, "tenants_on_survivors": baseline_survivors,
            "survivors_moved_fraction": baseline_moved / baseline_survivors,
            "survivor_tenant_requests_on_a_previous_engine": 0.98},
    }


def kill_rows(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    by_prefixes, by_requests = check_targets([], [entry])[-2:]
    assert "prefixes" in by_prefixes["target"] and "stricter" in by_requests["target"]
    return by_prefixes, by_requests


def test_survivors_moving_no_more_than_without_a_kill_meet_the_prefix_reading() -> None:
    by_prefixes, by_requests = kill_rows(kill(moved=1, survivors=29, baseline_moved=5, baseline_survivors=27,
                                              kept=0.947))
    assert by_prefixes["met"] is True and by_prefixes["survivor_tenants_moved_fraction_allowed"] == 5 / 27
    assert by_requests["met"] is False, "94.7% of the requests kept is under the stricter 95%"


def test_the_floor_allows_a_spill_when_the_quiet_half_moved_none() -> None:
    within, _ = kill_rows(kill(moved=3, survivors=31, baseline_moved=0, baseline_survivors=27, kept=0.97))
    assert 3 / 31 <= SURVIVOR_MOVES_FLOOR and within["met"] is True
    beyond, by_requests = kill_rows(kill(moved=4, survivors=13, baseline_moved=0, baseline_survivors=7,
                                         kept=0.97))
    assert beyond["met"] is False and by_requests["met"] is True


def test_a_killed_engine_tenant_that_stays_fails_both_readings() -> None:
    by_prefixes, by_requests = kill_rows(kill(moved=0, survivors=29, baseline_moved=2, baseline_survivors=27,
                                              kept=1.0, killed_moved=3))
    assert by_prefixes["met"] is False and by_requests["met"] is False
