"""Numbers derived from a run's samples and records: load balance across engines, hit rate over time,
and which engine served each tenant (before and after a kill)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.affinity.observe import ZERO, PrefixCounters, Sample
from benchmarks.loadgen import RequestRecord


def balance(samples: Sequence[Sample], engines: Sequence[str]) -> dict[str, Any]:
    """In-flight (running + waiting) per engine over the run.

    ``max_over_mean``: at each sample, the busiest engine's in-flight over the mean across engines, averaged
    over the samples where anything was in flight (the definition of the targets). It reads high at low
    load, where a handful of requests cannot spread evenly, so ``max_over_mean_of_time_avg`` (the busiest
    engine's time-averaged in-flight over the mean of those) is given as well.
    """
    ratios: list[float] = []
    totals = dict.fromkeys(engines, 0.0)
    for sample in samples:
        values = [sample.in_flight.get(name, 0) for name in engines]
        mean = sum(values) / len(values) if values else 0.0
        if mean > 0:
            ratios.append(max(values) / mean)
        for name, value in zip(engines, values, strict=True):
            totals[name] += value
    count = len(samples)
    time_avg = {name: total / max(count, 1) for name, total in totals.items()}
    mean_of_avg = sum(time_avg.values()) / len(time_avg) if time_avg else 0.0
    return {
        "samples": count,
        "busy_samples": len(ratios),
        "max_over_mean": sum(ratios) / len(ratios) if ratios else None,
        "max_over_mean_of_time_avg": max(time_avg.values()) / mean_of_avg if mean_of_avg > 0 else None,
        "time_avg_in_flight": time_avg,
        "peak_in_flight": {name: max((s.in_flight.get(name, 0) for s in samples), default=0)
                           for name in engines},
    }


def hit_rate_windows(samples: Sequence[Sample], window_s: float) -> list[dict[str, Any]]:
    """Engine-measured hit rate per window: deltas of the summed counters between window edges.

    A killed engine keeps its last reading, so it contributes nothing after its death."""
    if not samples:
        return []
    windows: list[dict[str, Any]] = []
    edge = samples[0]
    for sample in samples[1:]:
        if sample.t - edge.t + 1e-9 < window_s and sample is not samples[-1]:
            continue
        delta = _total(sample.counters.values()) - _total(edge.counters.values())
        per_engine = {name: (sample.counters[name] - edge.counters.get(name, ZERO)).hit_rate
                      for name in sample.counters}
        windows.append({"t_start_s": edge.t, "t_end_s": sample.t, "hit_rate": delta.hit_rate,
                        "queried_tokens": delta.queries, "per_engine": per_engine,
                        "engines_alive": sum(sample.alive.values())})
        edge = sample
    return windows


def _total(values: Iterable[PrefixCounters]) -> PrefixCounters:
    total = ZERO
    for value in values:
        total = total + value
    return total


def tenant_engines(records: Iterable[RequestRecord], header: str) -> dict[str, Counter[str]]:
    """tenant -> how many of its successful requests each engine served."""
    served: dict[str, Counter[str]] = {}
    for record in records:
        engine = record.headers.get(header)
        if record.success and record.tenant and engine:
            served.setdefault(record.tenant, Counter())[engine] += 1
    return served


def pinned_share(records: Iterable[RequestRecord], header: str) -> float | None:
    """Fraction of successful requests that went to their tenant's most used engine (1.0: fully pinned)."""
    served = tenant_engines(records, header)
    total = sum(sum(counts.values()) for counts in served.values())
    top = sum(counts.most_common(1)[0][1] for counts in served.values())
    return top / total if total else None


def tenant_moves(records: Sequence[RequestRecord], header: str, split_s: float, killed: str | None, *,
                 settle_s: float = 2.0, min_requests: int = 3, start_s: float = 0.0,
                 end_s: float = math.inf) -> dict[str, Any]:
    """Which tenants changed engine between ``[start_s, split_s)`` and ``[split_s + settle_s, end_s)``
    (request start times on the run's clock); ``killed`` died at ``split_s`` (None: a baseline of how
    much placements churn anyway).

    A tenant's engine in a period is the one that served most of its requests then; the ``settle_s`` after
    the split are left out (in-flight failures, the gateway noticing the death). Only tenants with at least
    ``min_requests`` in both periods are compared. Also: the share of the survivors' tenants' later
    requests served by an engine that had served that tenant before (where its prefix was cached), and
    the same share counting as kept, for a tenant the killed engine served part of, up to that part of its
    later requests landing on engines new to it (that part had to move: it is the killed engine's share)."""
    before = tenant_engines((r for r in records if start_s <= r.start < split_s), header)
    after = tenant_engines((r for r in records if split_s + settle_s <= r.start < end_s), header)
    rows: list[dict[str, Any]] = []
    for tenant in sorted(set(before) & set(after)):
        if sum(before[tenant].values()) < min_requests or sum(after[tenant].values()) < min_requests:
            continue
        old, old_count = before[tenant].most_common(1)[0]
        new = after[tenant].most_common(1)[0][0]
        rows.append({"tenant": tenant, "before": old, "after": new, "moved": old != new,
                     "home_share_before": old_count / sum(before[tenant].values()),
                     "requests_before": dict(before[tenant]), "requests_after": dict(after[tenant])})
    on_killed = [row for row in rows if row["before"] == killed]
    others = [row for row in rows if row["before"] != killed]
    kept = total = 0
    excess = 0.0
    for row in others:
        before_counts, after_counts = row["requests_before"], row["requests_after"]
        after_total = sum(after_counts.values())
        on_new = sum(count for engine, count in after_counts.items() if engine not in before_counts)
        total += after_total
        kept += after_total - on_new
        # The part of a tenant's traffic the killed engine served must go somewhere: it may land anywhere.
        killed_share = before_counts.get(killed, 0) / sum(before_counts.values()) if killed else 0.0
        excess += max(0.0, on_new - after_total * killed_share)
    return {
        "tenants_compared": len(rows),
        "tenants_on_killed": len(on_killed),
        "tenants_on_killed_moved": sum(row["moved"] for row in on_killed),
        "tenants_on_survivors": len(others),
        "tenants_on_survivors_moved": sum(row["moved"] for row in others),
        "survivors_moved_fraction": sum(row["moved"] for row in others) / len(others) if others else None,
        "moved_fraction_of_compared": sum(row["moved"] for row in rows) / len(rows) if rows else None,
        "killed_share_of_compared": len(on_killed) / len(rows) if rows else None,
        "survivor_tenant_requests_on_a_previous_engine": kept / total if total else None,
        "survivor_tenant_requests_kept_beyond_killed_share": 1.0 - excess / total if total else None,
        "tenants": rows,
    }


def moves_across_kill(records: Sequence[RequestRecord], header: str, kill_at: float, killed: str,
                      settle_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """``tenant_moves`` across the kill, and the same comparison between the two halves of the time before
    it: how much placements move with no kill at all (spills under the load bound, sessions, small
    counts)."""
    moves = tenant_moves(records, header, kill_at, killed, settle_s=settle_s)
    baseline = tenant_moves(records, header, kill_at / 2, None, settle_s=0.0, end_s=kill_at)
    return moves, baseline


def kill_moves(kill: Mapping[str, Any], header: str,
               settle_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored kill test's ``moves_across_kill``, recomputed from its request timeline (so results written
    before a measure existed get it)."""
    records = [RequestRecord(index=i, arrival=row["start_s"], start=row["start_s"], max_tokens=0,
                             success=row["success"], tenant=row["tenant"],
                             headers={header: row["engine"]} if row["engine"] else {})
               for i, row in enumerate(kill["requests_timeline"])]
    return moves_across_kill(records, header, kill["killed_at_s"], kill["killed"], settle_s)
