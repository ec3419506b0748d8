"""The ``vllm bench serve`` side of the cross-check: its per-request output read back as records
(recomputed with our aggregate to vLLM's definitions), its summary's names, the dataset and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.loadgen.metrics import aggregate
from benchmarks.loadgen.vllm_bench import (
    DRIVER,
    bench_command,
    figures_from_aggregate,
    figures_from_vllm,
    records_from_detailed,
    write_sharegpt_dataset,
)
from benchmarks.workloads import UniformRandomWorkload

# The shape of vLLM's --save-detailed result (start times are absolute perf_counter values).
DETAILED = {
    "duration": 2.0, "completed": 2, "failed": 1,
    "start_times": [100.0, 100.5, 101.0], "queue_times": [0.0, 0.25, 0.0],
    "ttfts": [0.1, 0.2, 0.0], "itls": [[0.1, 0.1], [0.3], []], "latencies": [0.3, 0.5, 0.0],
    "input_lens": [10, 20, 30], "output_lens": [3, 2, 0], "errors": ["", "", "Traceback: boom"],
}


def test_detailed_outputs_become_records_that_aggregate_to_vllms_figures() -> None:
    records = records_from_detailed(DETAILED)
    assert [(r.start, r.arrival, r.success) for r in records] == [(0.0, 0.0, True), (0.5, 0.25, True),
                                                                   (1.0, 1.0, False)]
    assert records[0].tpot == pytest.approx(0.1) and records[1].tpot == pytest.approx(0.3)
    figures = figures_from_aggregate(aggregate(records, DETAILED["duration"]))  # type: ignore[arg-type]
    assert figures["ttft_mean"] == pytest.approx(150.0)
    assert figures["tpot_mean"] == pytest.approx(200.0)
    assert figures["itl_mean"] == pytest.approx(500 / 3)
    assert figures["e2el_p50"] == pytest.approx(400.0)
    # vLLM counts input tokens of successful requests only: (10 + 20 + 3 + 2) / 2 s
    assert figures["total_token_throughput"] == pytest.approx(17.5)
    assert figures["request_throughput"] == pytest.approx(1.0)


def test_vllm_summary_names() -> None:
    summary = {"request_throughput": 1.0, "output_throughput": 2.0, "total_token_throughput": 3.0,
               "mean_ttft_ms": 4.0, "p50_ttft_ms": 5.0, "p90_ttft_ms": 6.0, "p99_ttft_ms": 7.0}
    figures = figures_from_vllm(summary)
    assert (figures["ttft_mean"], figures["ttft_p50"], figures["ttft_p99"]) == (4.0, 5.0, 7.0)
    assert figures["tpot_mean"] is None and figures["output_throughput"] == 2.0


def test_dataset_and_command(tmp_path: Path) -> None:
    specs = list(UniformRandomWorkload(input_words=8, output_tokens=4).generate(3, seed=1))
    dataset = tmp_path / "d.json"
    write_sharegpt_dataset(specs, dataset)
    rows = json.loads(dataset.read_text())
    assert [row["conversations"][0]["value"] for row in rows] == [s.prompt for s in specs]
    assert [len(row["conversations"][1]["value"].split()) for row in rows] == [s.max_tokens for s in specs]
    command = bench_command(Path("/py"), base_url="http://h:1", model="m", tokenizer=Path("/tok"),
                            dataset=dataset, num_prompts=3, output_len=None, rate=math.inf, burstiness=1.0,
                            max_concurrency=2, seed=7, result_dir=tmp_path, result_name="r.json")
    assert command[:5] == ["/py", "-c", DRIVER, "bench", "serve"]
    joined = " ".join(command[3:])
    assert "--sharegpt-output-len" not in joined  # per request, from the dataset
    for flag in ("--dataset-name sharegpt", "--disable-shuffle", "--ignore-eos",
                 "--request-rate inf", "--seed 7", "--max-concurrency 2", "--save-detailed"):
        assert flag in joined
    compile(DRIVER, "<driver>", "exec")
