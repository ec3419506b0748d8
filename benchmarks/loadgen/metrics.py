"""Aggregates over a run's request records, exactly as reference/benchmarks.md defines them.

- Latency statistics (TTFT, TPOT, ITL, E2EL, client queue time) over *successful* requests, in
  milliseconds: mean, std, p50, p90, p99 (numpy's linear interpolation) and the sample count; ITL
  gaps are pooled over all requests; TPOT exists only for requests with more than one output token.
  Statistics of an empty sample are None (not 0).
- Throughputs per second of ``duration``: completed requests, output tokens, prompt + output tokens
  (tokens from ``usage``, successful requests only).
- Goodput: successful requests meeting every given SLO (``{"ttft"|"tpot"|"e2el": milliseconds}``)
  per second. As in vLLM, a request with one output token has TPOT 0 for this purpose; a request
  without usage cannot show it meets a TPOT SLO and is not counted as good.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.loadgen.records import RequestRecord

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


def summarize_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """mean/std/p50/p90/p99 in milliseconds of values given in seconds."""
    if not values_s:
        return {"count": 0, "mean": None, "std": None, **{f"p{p}": None for p in PERCENTILES}}
    array = np.asarray(values_s, dtype=float) * 1000.0
    stats: dict[str, float | int | None] = {"count": len(values_s), "mean": float(array.mean()),
                                            "std": float(array.std())}
    for p in PERCENTILES:
        stats[f"p{p}"] = float(np.percentile(array, p))
    return stats


def meets_slos(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    if not record.success:
        return False
    for metric, limit_ms in slos_ms.items():
        limit = limit_ms / 1000.0
        if metric == "ttft":
            value = record.ttft
        elif metric == "e2el":
            value = record.e2el
        elif metric == "tpot":
            n = record.completion_tokens
            value = None if n is None else (record.tpot if n > 1 else 0.0)
        else:
            raise ValueError(f"unknown SLO metric {metric!r}; use one of {SLO_METRICS}")
        if value is None or value > limit:
            return False
    return True


def aggregate(records: Sequence[RequestRecord], duration: float,
              slos: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The run's aggregates; ``duration`` in seconds, ``slos`` in milliseconds."""
    if not duration > 0:
        raise ValueError("duration must be positive")
    slos = dict(slos or {})
    ok = [r for r in records if r.success]
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.completion_tokens or 0 for r in ok)
    cached_tokens = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    good = sum(1 for r in ok if meets_slos(r, slos)) if slos else None
    failures = Counter(_reason(r.error) for r in records if not r.success)
    return {
        "duration_s": duration,
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "failure_reasons": dict(failures.most_common(10)),
        "without_usage": sum(1 for r in ok if r.completion_tokens is None),
        "total_prompt_tokens": prompt_tokens,
        "total_output_tokens": output_tokens,
        "total_cached_tokens": sum(cached_tokens) if cached_tokens else None,
        "cached_token_ratio": (sum(cached_tokens) / prompt_tokens
                               if cached_tokens and prompt_tokens else None),
        "request_throughput": len(ok) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration,
        "slos_ms": slos,
        "good_requests": good,
        "goodput": None if good is None else good / duration,
        "ttft_ms": summarize_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": summarize_ms([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": summarize_ms([gap for r in ok for gap in r.itl]),
        "e2el_ms": summarize_ms([r.e2el for r in ok if r.e2el is not None]),
        "client_queue_ms": summarize_ms([r.client_queue for r in ok]),
    }


def _reason(error: str | None) -> str:
    """Failure reasons are grouped by their first line, cut at 80 characters."""
    return (error or "unknown").split("\n", 1)[0][:80]
