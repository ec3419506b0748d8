"""The oracle: every tenant pinned to one engine, the client sending straight to it (no gateway).

The pin is the best static one for known popularity: tenants in decreasing Zipf weight, each to the
engine with the least weight so far (longest-processing-time first), so the oracle both keeps every
prefix on one engine and spreads the load as evenly as a static pin can. Skipping the gateway also
skips its overhead (about 1.5 ms per request plus ~50 us per streamed token), small next to engine times.

``run_pinned`` keeps the one global arrival schedule: the requests are split by engine, each part is
replayed at its own arrival times by its own ``run_load`` (so sessions still wait for their previous
turn), and the records are put back on the common clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal

from benchmarks.loadgen import ArrivalProcess, RequestRecord, run_load
from benchmarks.loadgen.runner import RunResult
from benchmarks.workloads import RequestSpec, SharedPrefixWorkload


def pin_tenants(workload: SharedPrefixWorkload, engines: Sequence[str]) -> dict[str, str]:
    """tenant name -> engine name, balanced by Zipf weight (largest first to the lightest engine)."""
    weights = workload.tenant_weights()
    load = dict.fromkeys(engines, 0.0)
    pins: dict[str, str] = {}
    for tenant in sorted(range(workload.tenants), key=lambda k: (-weights[k], k)):
        engine = min(engines, key=lambda name: (load[name], engines.index(name)))
        pins[workload.tenant_name(tenant)] = engine
        load[engine] += weights[tenant]
    return pins


async def run_pinned(urls: dict[str, str], pins: dict[str, str], specs: Sequence[RequestSpec],
                     arrival: ArrivalProcess, *, model: str, header: str,
                     api: Literal["completions", "chat"] = "completions") -> RunResult:
    """Send each request to its tenant's engine at the global schedule's time; one ``RunResult``."""
    offsets = arrival.offsets(specs)
    parts: dict[str, list[RequestSpec]] = {name: [] for name in urls}
    for spec, offset in zip(specs, offsets, strict=True):
        engine = pins[spec.tenant or ""]
        parts[engine].append(dataclasses.replace(spec, timestamp=offset))
    started_at = time.time()
    t0 = time.perf_counter()

    async def part(engine: str, part_specs: list[RequestSpec]) -> tuple[list[RequestRecord], float]:
        base = part_specs[0].timestamp or 0.0
        await asyncio.sleep(max(0.0, t0 + base - time.perf_counter()))
        shift = time.perf_counter() - t0
        result = await run_load(urls[engine], part_specs, dataclasses.replace(arrival, use_timestamps=True),
                                model=model, api=api, ignore_eos=True)
        for record in result.records:
            record.arrival += shift
            record.start += shift
            record.headers[header] = engine
        return result.records, time.perf_counter() - t0

    done = await asyncio.gather(*(part(engine, part_specs)
                                  for engine, part_specs in parts.items() if part_specs))
    records = sorted((record for part_records, _ in done for record in part_records), key=lambda r: r.index)
    duration = max(end for _, end in done)
    settings: dict[str, Any] = {"urls": urls, "model": model, "api": api, "ignore_eos": True,
                                "num_requests": len(specs), "arrival": arrival.settings(), "pinned": True}
    return RunResult(records=records, duration=duration, started_at=started_at, settings=settings)
