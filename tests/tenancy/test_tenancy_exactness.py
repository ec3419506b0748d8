"""Exactness across replicas, at the store level: two OS processes with 100 asyncio clients each
drive one tenant's limits on the shared Redis for a few seconds, and the test audits every admission
in Redis's own order (the ledger's sequence numbers) against the token-bucket allowance
``capacity + capacity x elapsed / window`` measured on Redis's clock.

Figures (printed with -s): overshoot (must be 0), under-admission over the run and in the steady
state after the initial burst is spent. The end-to-end version through two gateway processes runs
once the app wires this component in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from policies.ratelimit import LimitKind

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("exactness_worker.py")
SHARED_REDIS = "redis://127.0.0.1:6379/0"
MINUTE = 60_000_000
PROCESSES = 2
CLIENTS = 100


def run_workers(tmp_path: Path, prefix: str, spec: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    start_at = time.time() + 3.0
    procs, outs = [], []
    for index in range(PROCESSES):
        out = tmp_path / f"worker{index}.json"
        outs.append(out)
        args = {"redis_url": SHARED_REDIS, "prefix": prefix, "clients": CLIENTS, "start_at": start_at,
                "seed": index, "out": str(out), "jitter_ms": 100, **spec}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)]))
    for proc in procs:
        assert proc.wait(timeout=spec["duration_s"] + 60) == 0
    events: list[list[Any]] = []
    errors: list[str] = []
    for out in outs:
        data = json.loads(out.read_text())
        events += data["events"]
        errors += data["errors"]
    return events, errors


def audit(events: list[list[Any]], kind: LimitKind, capacity: int, window: int) -> dict[str, Any]:
    ordered = sorted((e for e in events if e[0] != "r"), key=lambda e: e[1])
    assert [e[1] for e in ordered] == list(range(1, len(ordered) + 1)), "an operation went unrecorded"
    t0 = ordered[0][2]
    first_refusal = min((e[2] for e in events if e[0] == "r"), default=None)
    charged = 0
    worst_excess = None  # scaled by window
    open_leases = max_open = 0
    charged_at_refusal = None
    last_admission = (t0, 0)
    for op, _, now, amount in ordered:
        if first_refusal is not None and charged_at_refusal is None and now > first_refusal:
            charged_at_refusal = charged
        if op == "a":
            charged += 1 if kind == LimitKind.REQUESTS else amount
            open_leases += 1
            max_open = max(max_open, open_leases)
            excess = charged * window - (capacity * window + capacity * (now - t0))
            worst_excess = excess if worst_excess is None else max(worst_excess, excess)
            last_admission = (now, charged)
        else:
            open_leases -= 1
            if kind == LimitKind.TOKENS:
                charged += amount
    t_last, charged_last = last_admission
    allowance = capacity + capacity * (t_last - t0) / window
    figures: dict[str, Any] = {
        "admitted": sum(1 for e in ordered if e[0] == "a"), "refused": sum(1 for e in events if e[0] == "r"),
        "duration_s": (t_last - t0) / 1e6, "capacity": capacity, "window_s": window / 1e6,
        "charged": charged_last, "allowance": round(allowance, 2),
        "overshoot": max(0, worst_excess or 0) / window,
        "under_admission_pct": round(100 * (allowance - charged_last) / allowance, 3),
        "max_open_leases": max_open}
    if first_refusal is not None and charged_at_refusal is not None and t_last > first_refusal:
        steady_allowance = capacity * (t_last - first_refusal) / window
        steady = charged_last - charged_at_refusal
        figures["steady_state"] = {"from_s": (first_refusal - t0) / 1e6, "admitted": steady,
                                   "allowance": round(steady_allowance, 2),
                                   "under_admission_pct": round(100 * (steady_allowance - steady)
                                                                / steady_allowance, 3)}
    return figures


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\nexactness[{name}] {json.dumps(figures)}")


def test_requests_per_minute_is_exact_across_two_processes(tmp_path: Path, prefix: str,
                                                           shared_redis: object) -> None:
    capacity = 1200
    spec = {"limits": [["rpm", 1, capacity, MINUTE]], "duration_s": 10, "prompt": [10, 10], "completion": 10,
            "completion_used": [0, 10], "hold_ms": [10, 60]}
    events, errors = run_workers(tmp_path, prefix, spec)
    figures = audit(events, LimitKind.REQUESTS, capacity, MINUTE)
    report("requests_per_minute", figures)
    assert errors == []
    assert figures["overshoot"] == 0
    assert figures["under_admission_pct"] < 2


def test_tokens_per_minute_with_refunds_is_exact_across_two_processes(tmp_path: Path, prefix: str,
                                                                      shared_redis: object) -> None:
    capacity = 60_000
    spec = {"limits": [["tpm", 2, capacity, MINUTE]], "duration_s": 10, "prompt": [20, 100],
            "completion": 100, "completion_used": [0, 100], "hold_ms": [10, 60]}
    events, errors = run_workers(tmp_path, prefix, spec)
    figures = audit(events, LimitKind.TOKENS, capacity, MINUTE)
    report("tokens_per_minute", figures)
    assert errors == []
    assert figures["overshoot"] == 0
    assert figures["under_admission_pct"] < 2


def test_concurrency_never_exceeds_its_limit_across_two_processes(tmp_path: Path, prefix: str,
                                                                  shared_redis: object) -> None:
    spec = {"limits": [["conc", 4, 20, 0]], "duration_s": 4, "prompt": [1, 1], "completion": 1,
            "completion_used": [0, 1], "hold_ms": [5, 30]}
    events, errors = run_workers(tmp_path, prefix, spec)
    figures = audit(events, LimitKind.CONCURRENCY, 20, 1)
    report("concurrency", {k: figures[k] for k in ("admitted", "refused", "max_open_leases")})
    assert errors == []
    assert figures["max_open_leases"] <= 20
