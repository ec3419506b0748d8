"""The limiter scripts benchmark runs the real scripts on a private redis-server: every case's calls
succeed (the benchmark raises on a failed call), each call carries as many requests as the case says,
and it writes its JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import limiter_scripts


def test_a_short_run_measures_every_case_on_its_own_redis(tmp_path: Path) -> None:
    out = tmp_path / "scripts.json"
    assert limiter_scripts.main(["--requests", "320", "--passes", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    cases = {(row["script"], row["requests_per_call"]) for row in results["runs"]}
    assert cases == {(script, size) for script in ("admit", "settle") for size in limiter_scripts.SIZES}
    for row in results["runs"]:
        assert row["calls"] == 320 // row["requests_per_call"]
        assert row["us_per_request"] > 0 and row["us_per_call"] >= row["us_per_request"]
    assert results["summary"]["admit_plus_settle_alone_us"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
