"""`llm-gateway serve` with no config: it launches its two simulated engines (vLLM and TGI dialects,
kind `sim`) itself, and clients get answers from every dialect; stopping it stops the engines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from backends.launchers.process import free_port


def test_embedded_defaults_serve_every_dialect(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        stats = httpx.get(url + "/stats", timeout=5).json()
        assert set(stats["backends"]) == {"sim-vllm", "sim-tgi"}
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["sim-model"]
        # Round robin: consecutive requests exercise both engines (one per dialect).
        for _ in range(4):
            chat = client.chat.completions.create(model="sim-model", max_tokens=5,
                                                  messages=[{"role": "user", "content": "hi"}])
            assert chat.choices[0].message.content
        served = httpx.get(url + "/metrics", timeout=5).text
        assert 'gateway_requests_total{backend="sim-vllm"' in served
        assert 'gateway_requests_total{backend="sim-tgi"' in served
        native = httpx.post(url + "/generate", json={"prompt": "hi", "max_tokens": 4}, timeout=10).json()
        assert native["tokens"] >= 1
        tgi = httpx.post(url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 4}},
                         timeout=10).json()
        assert tgi["generated_text"]
        assert "AUTH DISABLED" in (tmp_path / "gateway.log").read_text()
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True
                                  ).stdout.split()
        assert len(children) == 2
    finally:
        process.terminate()
        process.wait(timeout=20)
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()
