"""The kill test's repeats gathered into one file: several ``python -m benchmarks.affinity run`` outputs
(full runs or ``--kill-only``, each possibly with ``--option prefix_affinity.OPTION=VALUE``) become, per
setting of the options studied (``bound_min_load``, ``hot_share``) and victim rule, the share of the
surviving engines' tenants' requests after the kill kept where they were: with each tenant's
killed-engine part free to move (the target's measure) and with nothing free to move (earlier runs'
measure), beside the same share measured without a kill (the run's baseline), as mean, min and max over
the runs; and how many of the survivors' tenants changed their main engine after the kill and without
one, pooled over the runs (the target's reading by prefixes). Runs of another length than 20 s + 20 s
are summarized apart. Measures a run did not store are recomputed from its request timeline.

Why: one kill run is noisy (the hottest engine's case ranged 79-96% over four runs at the same settings).

Run: ``python -m benchmarks.affinity.repeats RUN.json [RUN.json=SPEC ...] --out
benchmarks/results/affinity_kill_repeats.json``; ``=SPEC`` states options a run's settings do not record
because the code it ran lacked them or had other defaults: ``=N`` (bound_min_load) or
``=bound_min_load:0,hot_share:0``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.affinity.analysis import kill_moves
from benchmarks.affinity.settings import BACKEND_HEADER
from policies.prefix_affinity import PrefixAffinityConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"


STUDIED = ("bound_min_load", "hot_share")


def parse_stated(spec: str) -> dict[str, float]:
    """``N`` or ``option:value,option:value`` (options of ``STUDIED``)."""
    if not spec:
        return {}
    if ":" not in spec:
        return {"bound_min_load": float(spec)}
    stated = {}
    for item in spec.split(","):
        option, _, value = item.partition(":")
        if option not in STUDIED or not value:
            raise SystemExit(f"=SPEC wants N or option:value,... with options of {STUDIED}, got {spec!r}")
        stated[option] = float(value)
    return stated


def studied_options(document: dict[str, Any], stated: dict[str, float] | None = None) -> dict[str, float]:
    """The run's effective values of the studied options: policy defaults, then its recorded overrides,
    then what was stated."""
    defaults = PrefixAffinityConfig()
    overrides = document["settings"].get("gateway_overrides", {})
    recorded = overrides.get("routing", {}).get("options", {}).get("prefix_affinity", {})
    effective = {option: float(getattr(defaults, option)) for option in STUDIED}
    effective.update({option: float(value) for option, value in recorded.items() if option in STUDIED})
    effective.update(stated or {})
    return effective


def label(options: dict[str, float]) -> str:
    return ", ".join(f"{option} {options[option]:g}" for option in STUDIED)


def kill_span(kill: dict[str, Any]) -> str:
    """The kill run's traffic on either side of the kill (its ``settings.kill``), when not the 20 s + 20 s
    of the earlier runs (runs of different lengths are summarized apart)."""
    before_s, after_s = kill.get("before_s", 20.0), kill.get("after_s", 20.0)
    return "" if (before_s, after_s) == (20.0, 20.0) else f", kill {before_s:g} s + {after_s:g} s"


def kill_rows(document: dict[str, Any], source: str,
              stated: dict[str, float] | None = None) -> list[dict[str, Any]]:
    rows = []
    kill_settings = document.get("settings", {}).get("kill") or {}
    settle_s = kill_settings.get("settle_s", 2.0)
    span = kill_span(kill_settings)
    for kill in document.get("kills") or []:
        moves, baseline = kill["tenant_moves"], kill["baseline_moves_without_kill"]
        if "survivor_tenant_requests_kept_beyond_killed_share" not in moves and "requests_timeline" in kill:
            moves, baseline = kill_moves(kill, BACKEND_HEADER, settle_s)
        rows.append({
            "options": studied_options(document, stated), "span": span, "source": source,
            "command": document.get("command"), "created": document.get("created"),
            "victim_rule": kill["victim_rule"], "killed": kill["killed"],
            "survivor_tenants_moved": moves["tenants_on_survivors_moved"],
            "survivor_tenants": moves["tenants_on_survivors"],
            "survivor_tenants_moved_without_kill": baseline.get("tenants_on_survivors_moved"),
            "survivor_tenants_without_kill": baseline.get("tenants_on_survivors"),
            "survivor_requests_on_a_previous_engine": moves["survivor_tenant_requests_on_a_previous_engine"],
            "survivor_requests_kept_beyond_killed_share":
                moves.get("survivor_tenant_requests_kept_beyond_killed_share"),
            "same_without_kill": baseline["survivor_tenant_requests_on_a_previous_engine"],
            "hit_rate_before": kill["hit_rate_before_mean"], "hit_rate_after": kill["hit_rate_after_mean"],
            "failed_requests": kill["failed"],
        })
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting (and kill length) and victim: mean, min and max of the requests kept
    (``kept_beyond_killed_share``), of the share with nothing free to move, and of the no-kill baseline;
    and the survivors' tenants that changed engine, pooled over the runs, after the kill and without it."""
    summary: dict[str, dict[str, Any]] = {}
    for setting in sorted({_setting(row) for row in rows}):
        for victim in ("hottest", "other"):
            chosen = [row for row in rows if _setting(row) == setting and row["victim_rule"] == victim]
            if not chosen:
                continue
            fair = [row["survivor_requests_kept_beyond_killed_share"] for row in chosen]
            entry: dict[str, Any] = _spread(fair) if None not in fair else {"runs": len(chosen)}
            entry["nothing_free_to_move"] = _spread([row["survivor_requests_on_a_previous_engine"]
                                                     for row in chosen])
            entry["without_kill"] = _spread([row["same_without_kill"] for row in chosen])
            if all(row.get("survivor_tenants_moved_without_kill") is not None for row in chosen):
                entry["survivor_tenants_moved"] = _pooled(chosen, "survivor_tenants_moved",
                                                          "survivor_tenants")
                entry["survivor_tenants_moved_without_kill"] = _pooled(
                    chosen, "survivor_tenants_moved_without_kill", "survivor_tenants_without_kill")
            summary[f"{setting}, {victim}"] = entry
    return summary


def _setting(row: dict[str, Any]) -> str:
    return label(row["options"]) + str(row.get("span", ""))


def _pooled(rows: list[dict[str, Any]], moved: str, compared: str) -> dict[str, Any]:
    total_moved, total = sum(row[moved] for row in rows), sum(row[compared] for row in rows)
    return {"moved": total_moved, "compared": total, "fraction": total_moved / total if total else None}


def _tenants_line(entry: dict[str, Any]) -> str:
    after, before = entry.get("survivor_tenants_moved"), entry.get("survivor_tenants_moved_without_kill")
    if after is None or before is None:
        return ""
    return (f"; survivors' tenants that changed engine {after['moved']}/{after['compared']} after the kill, "
            f"{before['moved']}/{before['compared']} without one")


def _spread(shares: list[float]) -> dict[str, Any]:
    return {"runs": len(shares), "mean": statistics.mean(shares), "min": min(shares), "max": max(shares)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="outputs of `python -m benchmarks.affinity run` [=N]")
    parser.add_argument("--note", default="", help="free text kept in the output (e.g. TTFT checks)")
    parser.add_argument("--out", type=Path, default=RESULTS / "affinity_kill_repeats.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for run in args.runs:
        name, _, spec = run.partition("=")
        path = Path(name)
        rows += kill_rows(json.loads(path.read_text()), path.name, parse_stated(spec))
    document = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "note": args.note,
                "summary": summarize(rows), "runs": rows}
    args.out.write_text(json.dumps(document, indent=2))
    for key, value in document["summary"].items():
        other = value["nothing_free_to_move"]
        print(f"{key}: {value.get('mean', float('nan')):.3f} over {value['runs']} runs "
              f"({value.get('min', float('nan')):.3f}-{value.get('max', float('nan')):.3f}); nothing free "
              f"to move {other['mean']:.3f}; without a kill {value['without_kill']['mean']:.3f}"
              + _tenants_line(value))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
