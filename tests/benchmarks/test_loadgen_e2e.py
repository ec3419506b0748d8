"""The load generator against a real sim engine subprocess (``python -m backends.sim``, vLLM dialect,
free port, stopped by its PID): usage-based token counts, consistent aggregates, failures recorded
with their reason, multi-turn sessions resending the generated history, and the CLI end to end."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.launchers.process import ProcessLauncher
from benchmarks.__main__ import main
from benchmarks.loadgen import ArrivalProcess, RequestRecord, run_load
from benchmarks.workloads import SharedPrefixWorkload, UniformRandomWorkload
from tests.support.fleet import sim_engine

MODEL = "sim-bench"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessLauncher]:
    logs = tmp_path_factory.mktemp("bench-logs")
    with sim_engine("vllm", MODEL, logs, args=["--profile", "fast"]) as engine:
        yield engine


async def test_records_carry_usage_token_counts_and_aggregates_are_consistent(sim: ProcessLauncher) -> None:
    workload = UniformRandomWorkload(input_words=40, output_tokens=12, range_ratio=0.5)
    seen: list[RequestRecord] = []
    result = await run_load(sim.url, workload.generate(20, seed=1), ArrivalProcess(max_concurrency=4),
                            model=MODEL, ignore_eos=True, on_progress=seen.append)
    records = result.records
    assert len(seen) == 20 and [r.index for r in records] == list(range(20))
    for r in records:
        assert r.success, r.error
        assert r.completion_tokens == r.max_tokens  # ignore_eos: exactly max_tokens, from usage
        assert r.prompt_tokens == (r.prompt_words or 0) + 1  # one token per word, plus the sim's BOS
        assert r.ttft is not None and r.e2el is not None and 0 < r.ttft <= r.e2el
        assert sum(r.itl) == pytest.approx(r.e2el - r.ttft, abs=1e-9)
        assert r.tpot == pytest.approx((r.e2el - r.ttft) / (r.max_tokens - 1))
        assert r.start >= r.arrival >= 0 and r.start + r.e2el <= result.duration
    agg = result.aggregate({"e2el": 60_000})
    assert (agg["completed"], agg["failed"], agg["good_requests"]) == (20, 0, 20)
    assert agg["total_output_tokens"] == sum(r.max_tokens for r in records)
    assert agg["total_prompt_tokens"] == sum(r.prompt_tokens or 0 for r in records)
    assert agg["output_throughput"] == pytest.approx(agg["total_output_tokens"] / result.duration)
    assert agg["request_throughput"] == pytest.approx(20 / result.duration)
    assert agg["itl_ms"]["count"] == sum(len(r.itl) for r in records)
    assert agg["ttft_ms"]["p50"] <= agg["ttft_ms"]["p99"] <= agg["e2el_ms"]["p99"]
    assert result.settings["arrival"]["kind"] == "closed"


async def test_sessions_resend_the_generated_history_over_chat(sim: ProcessLauncher) -> None:
    workload = SharedPrefixWorkload(tenants=2, prefix_words=64, suffix_words=8, output_tokens=40,
                                    session_fraction=1.0, min_turns=3, max_turns=3, max_open_sessions=2)
    result = await run_load(sim.url, workload.generate(12, seed=5), ArrivalProcess(rate=200.0, seed=5),
                            model=MODEL, api="chat", ignore_eos=True)
    assert all(r.success for r in result.records), [r.error for r in result.records]
    by_session: dict[str | None, list[RequestRecord]] = {}
    for r in result.records:
        by_session.setdefault(r.session, []).append(r)
    assert len(by_session) == 4
    block = 16  # the sim's default KV block: cache hits come in whole blocks
    for turns in by_session.values():
        assert [r.turn for r in turns] == [0, 1, 2]
        for previous, current in itertools.pairwise(turns):
            assert current.start >= previous.start + (previous.e2el or 0)  # waited for the previous turn
            # The engine cached the previous prompt *and the tokens it generated*; a turn resending
            # the actual reply hits both (with the workload's synthetic reply it would hit the prompt only).
            assert (current.cached_tokens or 0) >= (previous.prompt_tokens or 0) + 40 - block


@pytest.mark.parametrize(("fault", "reason", "status"), [
    ("status=503", "HTTP 503", 503), ("error-after=2", "error event", 200), ("drop-after=2", "", 200),
])
async def test_failures_are_recorded_with_their_reason(sim: ProcessLauncher, fault: str, reason: str,
                                                       status: int) -> None:
    specs = UniformRandomWorkload(input_words=5, output_tokens=6).generate(2, 0)
    result = await run_load(sim.url, specs, ArrivalProcess(), model=MODEL, ignore_eos=True,
                            extra_headers={"x-sim-fault": fault})
    for r in result.records:
        assert not r.success and r.http_status == status
        assert r.error and r.error.startswith(reason)
    agg = result.aggregate()
    assert agg["failed"] == 2 and agg["completed"] == 0 and agg["ttft_ms"]["count"] == 0


def test_cli_sweep_writes_json_and_plot(sim: ProcessLauncher, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    main(["run", "--url", sim.url, "--workload", "shared-prefix", "--tenants", "3", "--prefix-words", "30",
          "--suffix-words", "5", "--output-tokens", "4", "--rate", "100", "inf", "--max-concurrency", "3",
          "--num-requests", "8", "--seed", "9", "--ignore-eos", "--goodput", "ttft:10000",
          "--out", str(out), "--plot", "--no-progress"])
    document = json.loads(out.read_text())
    assert document["settings"]["model"] == MODEL  # discovered from /v1/models
    assert document["settings"]["rates"] == [100.0, "inf"] and document["settings"]["seed"] == 9
    assert {"cpu_count", "platform", "python", "loadavg"} <= document["machine"].keys()
    assert "commit" in document["git"]
    assert [run["settings"]["arrival"]["seed"] for run in document["runs"]] == [9, 10]
    for run in document["runs"]:
        assert run["aggregate"]["completed"] == 8 and run["aggregate"]["good_requests"] == 8
        assert len(run["records"]) == 8 and all(row["completion_tokens"] == 4 for row in run["records"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    replot = tmp_path / "again.png"
    assert main(["plot", str(out), "--out", str(replot)]) == 0 and replot.exists()
