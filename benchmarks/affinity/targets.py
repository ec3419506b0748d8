"""Issue 4's targets, checked against the measured runs, with the measured values beside each.

Every rate of a regime is checked; a target is ``met`` only when it holds at every rate (``per_rate`` shows
where it does not). Interpretations, where the issue's wording leaves room:
- "within 5 points of the oracle": ``oracle hit rate - prefix_affinity hit rate <= 0.05`` (above is fine);
- "within 3% of least_loaded" (0.5x, the control): prefix_affinity's request throughput at least 0.97x
  least_loaded's and its TTFT p90 at most 1.03x least_loaded's (better is fine);
- "max/mean in-flight per engine": each engine's in-flight (running + waiting) averaged over the run, the
  busiest engine's over the mean of those (``max_over_mean_of_time_avg``). The stricter reading, the same
  ratio at every 100 ms sample then averaged (``max_over_mean``), is checked as its own row with
  round_robin's and least_loaded's beside it: at 5-17 requests per engine it mostly measures arrival
  noise (least_loaded, whose only aim is balance, reads 1.17-1.35 by it), and the issue's own bounded
  loads at c=1.25 admit ``ceil(1.25 * (N + 1) / n)`` per engine, 7 of a mean of 5 (1.4) at N=19, n=4;
- the kill test, "only its share of prefixes moves", read by prefixes (tenants) as the issue says: every
  tenant whose main engine was the killed one moves, and of the surviving engines' tenants no more change
  their main engine after the kill than before it without one (``baseline_*``: the same count between the
  two halves of the time before the kill, since placements under a load bound, spills of hot tenants,
  move somewhat anyway), with a floor of ``SURVIVOR_MOVES_FLOOR`` of them (a run whose quiet half moved
  none may still spill a tenant or two). A tenant's main engine is the one that served most of its
  requests in the period; only tenants with a few requests in both periods are compared, so the kill test
  runs 60 s on each side of the kill (20 s compared only 13-17 survivors' tenants, and one tenant more or
  less moved the result by 6-8 points).
- the stricter reading of the kill test, by requests, as its own row: at least 95% of the later requests
  of the surviving engines' tenants stay on engines that had served that tenant before the kill (its
  prefix stays where it was cached), a tenant being allowed to move the part of its traffic the killed
  engine had served (that part is the killed engine's share). Beside it: the same share allowing nothing
  to move (the reading of earlier runs), and the same share without a kill. It counts the requests of a
  hot tenant that spill to a new engine under the load bound when a survivor takes on the killed engine's
  part of the hottest tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Run = dict[str, Any]
AFFINITY_REGIME = "0.7x-fleet"
CONTROL_REGIME = "0.5x-engine"
SURVIVOR_MOVES_FLOOR = 0.10
KEPT_REQUESTS_TARGET = 0.95


def _runs_by_rate(runs: Sequence[Run], regime: str, policy: str) -> dict[float, Run]:
    return {run["rate"]: run for run in runs if run["regime"] == regime and run["policy"] == policy}


def _compare(runs: Sequence[Run], regime: str, policy: str, reference: str,
             check: Callable[[Run, Run], tuple[bool | None, dict[str, Any]]]) -> dict[str, Any]:
    mine = _runs_by_rate(runs, regime, policy)
    theirs = _runs_by_rate(runs, regime, reference)
    per_rate = []
    for rate in sorted(set(mine) & set(theirs)):
        ok, values = check(mine[rate], theirs[rate])
        per_rate.append({"rate": rate, "met": ok, **values})
    verdicts = [row["met"] for row in per_rate]
    met = None if not verdicts or None in verdicts else all(verdicts)
    return {"met": met, "met_at_rates": [row["rate"] for row in per_rate if row["met"]], "per_rate": per_rate}


def _hit_gap(pa: Run, oracle: Run) -> tuple[bool | None, dict[str, Any]]:
    if pa["hit_rate"] is None or oracle["hit_rate"] is None:
        return None, {}
    gap = oracle["hit_rate"] - pa["hit_rate"]
    return gap <= 0.05, {"prefix_affinity": pa["hit_rate"], "oracle": oracle["hit_rate"],
                         "gap_points": 100 * gap}


def _ttft_ratio(pa: Run, rr: Run) -> tuple[bool | None, dict[str, Any]]:
    mine, theirs = pa["ttft_ms"]["p90"], rr["ttft_ms"]["p90"]
    if mine is None or not theirs:
        return None, {}
    return mine / theirs <= 0.4, {"prefix_affinity_ms": mine, "round_robin_ms": theirs,
                                  "ratio": mine / theirs}


def _control(pa: Run, ll: Run) -> tuple[bool | None, dict[str, Any]]:
    throughput = pa["request_throughput"] / ll["request_throughput"] if ll["request_throughput"] else None
    p90_mine, p90_theirs = pa["ttft_ms"]["p90"], ll["ttft_ms"]["p90"]
    ttft = p90_mine / p90_theirs if p90_mine is not None and p90_theirs else None
    if throughput is None or ttft is None:
        return None, {}
    return throughput >= 0.97 and ttft <= 1.03, {
        "throughput_ratio": throughput, "ttft_p90_ratio": ttft,
        "prefix_affinity_req_s": pa["request_throughput"], "least_loaded_req_s": ll["request_throughput"],
        "prefix_affinity_ttft_p90_ms": p90_mine, "least_loaded_ttft_p90_ms": p90_theirs,
        "ttft_p50_ratio": (pa["ttft_ms"]["p50"] / ll["ttft_ms"]["p50"]) if ll["ttft_ms"]["p50"] else None}


def _balance(runs: Sequence[Run], regime: str, policy: str, limit: float, reading: str) -> dict[str, Any]:
    """``reading``: "max_over_mean_of_time_avg" or "max_over_mean" (per sample); the other policies'
    values of the same reading are given beside."""
    per_rate = []
    others = {name: _runs_by_rate(runs, regime, name) for name in ("round_robin", "least_loaded")}
    for rate, run in sorted(_runs_by_rate(runs, regime, policy).items()):
        value = run["balance"][reading]
        beside = {name: by_rate[rate]["balance"][reading]
                  for name, by_rate in others.items() if rate in by_rate}
        per_rate.append({"rate": rate, "met": None if value is None else value <= limit, reading: value,
                         "others": beside})
    verdicts = [row["met"] for row in per_rate]
    return {"met": None if not verdicts or None in verdicts else all(verdicts),
            "met_at_rates": [row["rate"] for row in per_rate if row["met"]], "per_rate": per_rate}


def check_targets(runs: Sequence[Run], kills: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = [
        {"target": "0.7x fleet: prefix_affinity hit rate within 5 points of the oracle",
         **_compare(runs, AFFINITY_REGIME, "prefix_affinity", "oracle", _hit_gap)},
        {"target": "0.7x fleet: prefix_affinity TTFT p90 at most 0.4x round_robin's",
         **_compare(runs, AFFINITY_REGIME, "prefix_affinity", "round_robin", _ttft_ratio)},
        {"target": "0.7x fleet: prefix_affinity max/mean in-flight per engine at most 1.25 (each engine's "
                   "in-flight averaged over the run)",
         **_balance(runs, AFFINITY_REGIME, "prefix_affinity", 1.25, "max_over_mean_of_time_avg")},
        {"target": "0.7x fleet: the stricter reading, max/mean in-flight at every 100 ms sample, averaged, "
                   "at most 1.25",
         **_balance(runs, AFFINITY_REGIME, "prefix_affinity", 1.25, "max_over_mean")},
        {"target": "0.5x one engine: prefix_affinity within 3% of least_loaded (throughput, TTFT p90)",
         **_compare(runs, CONTROL_REGIME, "prefix_affinity", "least_loaded", _control)},
    ]
    for kill in kills:
        targets.extend(_kill_targets(kill))
    return targets


def _kill_targets(kill: dict[str, Any]) -> list[dict[str, Any]]:
    """The kill test's two rows (see the module docstring): by prefixes, then by requests."""
    moves = kill["tenant_moves"]
    baseline = kill["baseline_moves_without_kill"]
    fraction = moves["survivors_moved_fraction"]
    baseline_fraction = baseline["survivors_moved_fraction"]
    allowed = max(baseline_fraction or 0.0, SURVIVOR_MOVES_FLOOR)
    all_killed_moved = moves["tenants_on_killed_moved"] == moves["tenants_on_killed"]
    kept = moves.get("survivor_tenant_requests_kept_beyond_killed_share")
    name = f"engine killed mid-run ({kill['victim_rule']}: {kill['killed']})"
    measured = {
        "survivor_tenants_moved": moves["tenants_on_survivors_moved"],
        "survivor_tenants": moves["tenants_on_survivors"],
        "survivor_tenants_moved_fraction": fraction,
        "survivor_tenants_moved_fraction_allowed": allowed,
        "killed_engine_tenants_moved": moves["tenants_on_killed_moved"],
        "killed_engine_tenants": moves["tenants_on_killed"],
        "moved_fraction_of_compared": moves["moved_fraction_of_compared"],
        "killed_share_of_compared": moves["killed_share_of_compared"],
        "survivor_tenant_requests_kept_beyond_killed_share": kept,
        "survivor_tenant_requests_on_a_previous_engine":
            moves["survivor_tenant_requests_on_a_previous_engine"],
        "baseline_tenants_moved_without_kill": baseline["tenants_on_survivors_moved"],
        "baseline_tenants_compared": baseline["tenants_on_survivors"],
        "baseline_moved_fraction": baseline_fraction,
        "baseline_requests_on_a_previous_engine": baseline["survivor_tenant_requests_on_a_previous_engine"],
        "hit_rate_before": kill["hit_rate_before_mean"], "hit_rate_after": kill["hit_rate_after_mean"],
    }
    return [
        {"target": f"{name}: only its share of prefixes moves (the survivors' tenants that change engine "
                   "no more than without a kill)",
         "met": None if fraction is None else all_killed_moved and fraction <= allowed, **measured},
        {"target": f"{name}: the stricter reading, at least {KEPT_REQUESTS_TARGET:.0%} of the survivors' "
                   "tenants' later requests kept where they were",
         "met": None if kept is None else all_killed_moved and kept >= KEPT_REQUESTS_TARGET, **measured},
    ]
