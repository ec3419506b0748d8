"""The sim embedded in a running event loop (``backends.sim.app.start``), as the gateway embeds it."""

from __future__ import annotations

import asyncio
import re

import httpx

from backends.sim.app import start
from backends.sim.context import SimConfig
from backends.sim.profiles import PROFILES


def gauge(metrics: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", metrics, re.M)
    assert found is not None, name
    return float(found.group(1))


async def test_queueing_shows_in_vllm_running_and_waiting_gauges() -> None:
    engine = PROFILES["instant"].with_overrides(max_num_seqs=1, step_overhead=0.01)
    sim = await start(SimConfig(port=0, model="embedded", engine=engine))
    body = {"model": "embedded", "prompt": "queue", "max_tokens": 300, "ignore_eos": True, "stream": True}
    try:
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            async def consume() -> int:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    return sum([line.startswith("data:") async for line in response.aiter_lines()])

            streams = [asyncio.create_task(consume()) for _ in range(2)]
            running = waiting = 0.0
            for _ in range(200):
                metrics = (await client.get("/metrics")).text
                running = gauge(metrics, "vllm:num_requests_running")
                waiting = gauge(metrics, "vllm:num_requests_waiting")
                if (running, waiting) == (1.0, 1.0):
                    break
                await asyncio.sleep(0.01)
            assert (running, waiting) == (1.0, 1.0)
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            for _ in range(200):
                state = (await client.get("/sim/state")).json()
                if state["running"] == state["waiting"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert state["running"] == state["waiting"] == 0
            assert sim.context.engine.stats.finished.get("abort") == 2
    finally:
        await sim.stop()
