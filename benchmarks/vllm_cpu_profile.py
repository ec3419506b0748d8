"""Measure the real vLLM CPU server (tiny model) to calibrate the simulator's "vllm-cpu" profile.

Prefill: time to first token (streamed completions, ``max_tokens`` 1) for prompts of k x 128 + 1
random token ids, cold (nothing cached: fresh ids) and warm (the same prompt again, so k whole
128-token blocks hit and one token is computed). Fitted: ``ttft = overhead + per_uncached_token *
uncached`` (free, and with the overhead pinned to the warm median: the ``sim_*`` figures), plus the cost
per cached token that the warm points show. Decode: B concurrent requests
(B = 1, 2, 4, 8) of 64 tokens each; a step's time is (E2EL - TTFT) / (n - 1) per request, the median
over the batch; fitted ``step = base + per_seq * B``. Writes benchmarks/results/vllm_cpu_profile.json
and a plot. Runs in about 2 minutes including the server start (or less with ``--base-url``).

    .venv/bin/python -m benchmarks.vllm_cpu_profile [--base-url http://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.support.vllm_server import REPO_ROOT, VllmServer, VllmServerConfig

RESULTS = REPO_ROOT / "benchmarks" / "results"
MODEL = "tiny-llama"
BLOCK = 128
PREFILL_BLOCKS = (1, 2, 4, 6, 8, 12)
REPEATS = 3
BATCH_SIZES = (1, 2, 4, 8)
DECODE_TOKENS = 64
SEED = 7


async def timed_completion(session: aiohttp.ClientSession, url: str, prompt: list[int],
                           max_tokens: int) -> dict[str, float]:
    """Stream one completion: TTFT, E2EL (both from just before the POST), and its usage."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = 0.0
    usage: dict[str, Any] = {}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                last = time.perf_counter() - start
                first = first or last
            if chunk.get("usage"):
                usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    return {"ttft": first, "e2el": last, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": details.get("cached_tokens") or 0,
            "completion_tokens": usage["completion_tokens"]}


def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(5, 2048) for _ in range(length)]  # ids 0-4 are the special tokens


async def measure_prefill(session: aiohttp.ClientSession, url: str,
                          rng: random.Random) -> list[dict[str, Any]]:
    points = []
    for _ in range(REPEATS):
        for blocks in PREFILL_BLOCKS:
            prompt = random_prompt(rng, blocks * BLOCK + 1)
            cold = await timed_completion(session, url, prompt, 1)
            warm = await timed_completion(session, url, prompt, 1)
            for state, result in (("cold", cold), ("warm", warm)):
                points.append({"state": state, **result,
                               "uncached_tokens": result["prompt_tokens"] - result["cached_tokens"]})
    return points


async def measure_decode(session: aiohttp.ClientSession, url: str,
                         rng: random.Random) -> list[dict[str, Any]]:
    points = []
    for _ in range(2):
        for batch in BATCH_SIZES:
            results = await asyncio.gather(*(
                timed_completion(session, url, random_prompt(rng, 32), DECODE_TOKENS) for _ in range(batch)))
            steps = [(r["e2el"] - r["ttft"]) / (r["completion_tokens"] - 1) for r in results]
            points.append({"batch": batch, "step_s": statistics.median(steps),
                           "tokens_per_s": batch / statistics.median(steps)})
    return points


def fit(prefill: list[dict[str, Any]], decode: list[dict[str, Any]]) -> dict[str, float]:
    cold = [p for p in prefill if p["state"] == "cold"]
    per_token, overhead = np.polyfit([p["uncached_tokens"] for p in cold], [p["ttft"] for p in cold], 1)
    # All points: ttft = overhead + a * uncached + b * cached (cached tokens still cost attention reads).
    design = np.array([[1.0, p["uncached_tokens"], p["cached_tokens"]] for p in prefill])
    (joint_overhead, joint_uncached, joint_cached), *_ = np.linalg.lstsq(
        design, np.array([p["ttft"] for p in prefill]), rcond=None)
    per_seq, base = np.polyfit([p["batch"] for p in decode], [p["step_s"] for p in decode], 1)
    # For the simulator: the fixed cost is what a fully cached prompt pays (one token computed); the
    # slope is then fitted through it, so a short cold prompt is never predicted below a warm one.
    warm_median = statistics.median(p["ttft"] for p in prefill if p["state"] == "warm")
    extra = np.array([p["ttft"] - warm_median for p in cold])
    uncached = np.array([p["uncached_tokens"] - 1 for p in cold], dtype=float)
    sim_per_token = float(extra @ uncached / (uncached @ uncached))
    return {"sim_overhead_s": warm_median, "sim_prefill_s_per_uncached_token": sim_per_token,
            "prefill_s_per_uncached_token": float(per_token), "prefill_overhead_s": float(overhead),
            "joint_overhead_s": float(joint_overhead), "joint_s_per_uncached_token": float(joint_uncached),
            "joint_s_per_cached_token": float(joint_cached),
            "decode_step_base_s": float(base), "decode_step_s_per_seq": float(per_seq)}


def plot(prefill: list[dict[str, Any]], decode: list[dict[str, Any]], fitted: dict[str, float],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for state, marker in (("cold", "o"), ("warm", "x")):
        points = [p for p in prefill if p["state"] == state]
        left.scatter([p["prompt_tokens"] for p in points], [p["ttft"] * 1000 for p in points],
                     marker=marker, label=state)
    xs = np.array([0, max(p["prompt_tokens"] for p in prefill)])
    left.plot(xs, (fitted["prefill_overhead_s"] + fitted["prefill_s_per_uncached_token"] * xs) * 1000,
              "--", label="cold fit")
    left.set(xlabel="prompt tokens", ylabel="TTFT (ms)", title="Prefill (max_tokens 1)")
    left.legend()
    right.scatter([p["batch"] for p in decode], [p["step_s"] * 1000 for p in decode])
    bs = np.array([1, max(BATCH_SIZES)])
    right.plot(bs, (fitted["decode_step_base_s"] + fitted["decode_step_s_per_seq"] * bs) * 1000, "--")
    right.set(xlabel="concurrent sequences", ylabel="decode step (ms)", title="Decode step vs batch")
    figure.suptitle("vLLM 0.32 CPU, tiny Llama (2 layers, hidden 256), 2 shared cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


async def run(url: str) -> dict[str, Any]:
    rng = random.Random(SEED)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(3):  # first calls after start pay one-off setup costs
            await timed_completion(session, url, random_prompt(rng, 300), 8)
        prefill = await measure_prefill(session, url, rng)
        decode = await measure_decode(session, url, rng)
    return {"prefill": prefill, "decode": decode, "fit": fit(prefill, decode)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base-url", help="measure a running server (default flags) instead of starting one")
    parser.add_argument("--out", type=Path, default=RESULTS / "vllm_cpu_profile.json")
    options = parser.parse_args()
    config = VllmServerConfig()
    with ExitStack() as stack:
        url, startup = options.base_url, None
        if not url:
            server = stack.enter_context(VllmServer(REPO_ROOT / ".cache" / "logs" / "vllm-profile.log",
                                                    config=config))
            url, startup = server.base_url, server.startup_seconds
        load_before = os.getloadavg()
        started = time.monotonic()
        measured = asyncio.run(run(url))
        elapsed = time.monotonic() - started
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg(), "note": "2 cores shared with other users"},
        "settings": {"engine": "vllm-cpu 0.32.0", "model": "tiny Llama 2x256, bf16", "block_size": BLOCK,
                     "server_args": config.args(Path("MODEL"), 0)[2:], "seed": SEED, "repeats": REPEATS,
                     "decode_tokens": DECODE_TOKENS},
        "server_startup_s": startup, "measure_s": elapsed, **measured,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(measured["prefill"], measured["decode"], measured["fit"], options.out.with_suffix(".png"))
    print(json.dumps(measured["fit"], indent=2))
    print(f"measured in {elapsed:.0f} s -> {options.out}")


if __name__ == "__main__":
    main()
