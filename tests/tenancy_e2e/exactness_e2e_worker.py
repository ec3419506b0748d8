"""The clients of the end-to-end exactness test, in their own OS process: many asyncio clients (one
aiohttp session) send completions to the gateway replicas (client i to replica i mod n) until the
deadline; a refused client sleeps for the Retry-After the gateway sent plus a random jitter, as SDK
clients do. Every answer is written down with the wall-clock times (the clock Redis's TIME reads on
this host) it was sent, its head arrived and it ended, and the usage the engine reported.

Run: python exactness_e2e_worker.py '<json: urls, key, clients, start_at, duration_s, phases
[[from_s, max_tokens]...], prompt, stream_fraction, jitter_s, seed, out>'
Writes {"records": [[status, sent, head, done, prompt_tokens, completion_tokens, max_tokens,
headers_ok, retry_after_ms, stream]...], "errors": [...]} to ``out``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import aiohttp

RATE_LIMIT_HEADERS = tuple(f"x-ratelimit-{kind}-{unit}" for unit in ("requests", "tokens")
                           for kind in ("limit", "remaining", "reset"))


def max_tokens_at(spec: dict[str, Any], now: float) -> int:
    chosen = spec["phases"][0][1]
    for from_s, max_tokens in spec["phases"]:
        if now >= spec["start_at"] + from_s:
            chosen = max_tokens
    return int(chosen)


async def read_usage(response: aiohttp.ClientResponse, stream: bool) -> dict[str, int] | None:
    if not stream:
        usage: dict[str, int] | None = (await response.json()).get("usage")
        return usage
    usage = None
    async for line in response.content:
        if line.startswith(b"data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    return usage


async def client(index: int, session: aiohttp.ClientSession, spec: dict[str, Any], rng: random.Random,
                 records: list[list[Any]], errors: list[str]) -> None:
    url = spec["urls"][index % len(spec["urls"])] + "/v1/completions"
    headers = {"authorization": f"Bearer {spec['key']}"}
    end = spec["start_at"] + spec["duration_s"]
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    while time.time() < end:
        stream = rng.random() < spec["stream_fraction"]
        max_tokens = max_tokens_at(spec, time.time())
        body: dict[str, Any] = {"model": spec["model"], "prompt": spec["prompt"], "max_tokens": max_tokens,
                                "ignore_eos": True, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        sent = time.time()
        try:
            async with session.post(url, json=body, headers=headers) as response:
                head = time.time()
                status = response.status
                usage = await read_usage(response, stream) if status == 200 else None
                if status != 200:
                    await response.read()
                done = time.time()
                names = RATE_LIMIT_HEADERS + (("retry-after", "retry-after-ms") if status == 429 else ())
                headers_ok = all(name in response.headers for name in names)
                retry_ms = int(response.headers.get("retry-after-ms", "0") or 0)
        except (aiohttp.ClientError, TimeoutError) as error:
            errors.append(f"{type(error).__name__}: {error}")
            await asyncio.sleep(0.1)
            continue
        prompt_tokens = usage["prompt_tokens"] if usage else -1
        completion_tokens = usage["completion_tokens"] if usage else -1
        records.append([status, sent, head, done, prompt_tokens, completion_tokens, max_tokens, headers_ok,
                        retry_ms, stream])
        if status == 429:
            await asyncio.sleep(retry_ms / 1000 + rng.uniform(0, spec["jitter_s"]))
        elif status != 200:
            errors.append(f"HTTP {status}")
            await asyncio.sleep(0.1)


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    records: list[list[Any]] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session, spec, random.Random(rng.random()), records, errors)
                               for i in range(spec["clients"])))
    return {"records": records, "errors": errors}


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    result = asyncio.run(main(arguments))
    with open(arguments["out"], "w") as out:
        json.dump(result, out)
