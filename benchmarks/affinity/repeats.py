"""The kill test's repeats gathered into one file: several ``python -m benchmarks.affinity run`` outputs
(full runs or ``--kill-only``, each possibly with ``--option prefix_affinity.bound_min_load=N``) become,
per bound_min_load and victim rule, the share of the surviving engines' tenants' requests after the kill
that an engine which had served that tenant before served (with the same share measured without a kill,
the run's baseline), and its mean, min and max over the runs.

Why: one kill run is noisy (the hottest engine's case ranged 79-96% over four runs at the same settings).

Run: ``python -m benchmarks.affinity.repeats RUN.json [RUN.json=N ...] --out
benchmarks/results/affinity_kill_repeats.json``; ``=N`` states the bound_min_load of a run whose
settings do not record it (runs made before the option existed used 0 with no override).
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


def bound_min_load(document: dict[str, Any], stated: float | None = None) -> float:
    if stated is not None:
        return stated
    overrides = document["settings"].get("gateway_overrides", {})
    options = overrides.get("routing", {}).get("options", {}).get("prefix_affinity", {})
    return float(options.get("bound_min_load", PrefixAffinityConfig().bound_min_load))


def kill_rows(document: dict[str, Any], source: str, stated: float | None = None) -> list[dict[str, Any]]:
    rows = []
    settle_s = (document.get("settings", {}).get("kill") or {}).get("settle_s", 2.0)
    for kill in document.get("kills") or []:
        moves, baseline = kill["tenant_moves"], kill["baseline_moves_without_kill"]
        if "survivor_tenant_requests_kept_beyond_killed_share" not in moves and "requests_timeline" in kill:
            moves, baseline = kill_moves(kill, BACKEND_HEADER, settle_s)
        rows.append({
            "bound_min_load": bound_min_load(document, stated), "source": source,
            "command": document.get("command"), "created": document.get("created"),
            "victim_rule": kill["victim_rule"], "killed": kill["killed"],
            "survivor_tenants_moved": moves["tenants_on_survivors_moved"],
            "survivor_tenants": moves["tenants_on_survivors"],
            "survivor_requests_on_a_previous_engine": moves["survivor_tenant_requests_on_a_previous_engine"],
            "survivor_requests_kept_beyond_killed_share":
                moves.get("survivor_tenant_requests_kept_beyond_killed_share"),
            "same_without_kill": baseline["survivor_tenant_requests_on_a_previous_engine"],
            "hit_rate_before": kill["hit_rate_before_mean"], "hit_rate_after": kill["hit_rate_after_mean"],
            "failed_requests": kill["failed"],
        })
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per bound and victim: mean, min and max of the share with nothing free to move, and under
    ``kept_beyond_killed_share`` the same of the share that lets each tenant's killed-engine part move."""
    summary: dict[str, dict[str, Any]] = {}
    for bound in sorted({row["bound_min_load"] for row in rows}, reverse=True):
        for victim in ("hottest", "other"):
            chosen = [row for row in rows if row["bound_min_load"] == bound and row["victim_rule"] == victim]
            if not chosen:
                continue
            entry: dict[str, Any] = _spread([row["survivor_requests_on_a_previous_engine"] for row in chosen])
            fair = [row["survivor_requests_kept_beyond_killed_share"] for row in chosen]
            if None not in fair:
                entry["kept_beyond_killed_share"] = _spread(fair)
            summary[f"bound_min_load {bound:g}, {victim}"] = entry
    return summary


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
        name, _, stated = run.partition("=")
        path = Path(name)
        rows += kill_rows(json.loads(path.read_text()), path.name, float(stated) if stated else None)
    document = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "note": args.note,
                "summary": summarize(rows), "runs": rows}
    args.out.write_text(json.dumps(document, indent=2))
    for key, value in document["summary"].items():
        fair = value.get("kept_beyond_killed_share")
        beside = (f"; killed-engine part free to move: {fair['mean']:.3f} "
                  f"({fair['min']:.3f}-{fair['max']:.3f})") if fair else ""
        print(f"{key}: {value['mean']:.3f} over {value['runs']} runs ({value['min']:.3f}-{value['max']:.3f})"
              f"{beside}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
