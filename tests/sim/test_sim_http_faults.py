"""Fault injection and client disconnects over real HTTP (per request, per process, command line)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

MODEL = "sim-test"
SSE = Any  # the ``sse`` fixture's reader (conftest.SSE)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Faults"}], "max_tokens": 30,
        "ignore_eos": True}


def stream_lines(url: str, path: str, body: Any, fault: str) -> tuple[list[str], Exception | None]:
    """The ``data:`` payloads received before the stream ended or broke."""
    lines: list[str] = []
    try:
        with httpx.stream("POST", url + path, json=body, headers={"x-sim-fault": fault},
                          timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    lines.append(line[5:].strip())
    except httpx.HTTPError as exc:
        return lines, exc
    return lines, None


def test_status_fault_uses_each_dialects_error_shape(vllm_sim: str, tgi_sim: str) -> None:
    response = httpx.post(vllm_sim + "/v1/chat/completions", json=CHAT,
                          headers={"x-sim-fault": "status=503"})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    tgi = httpx.post(tgi_sim + "/generate", json={"inputs": "x"}, headers={"x-sim-fault": "status=429"})
    assert tgi.status_code == 429 and tgi.json()["error_type"] == "overloaded"
    bad = httpx.post(vllm_sim + "/v1/chat/completions", json=CHAT, headers={"x-sim-fault": "explode=1"})
    assert bad.status_code == 400


def test_drop_after_n_tokens_breaks_the_stream(vllm_sim: str, tgi_sim: str) -> None:
    lines, error = stream_lines(vllm_sim, "/v1/chat/completions", {**CHAT, "stream": True}, "drop-after=3")
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(lines) == 4 and "[DONE]" not in lines  # role chunk + 3 tokens
    lines, error = stream_lines(tgi_sim, "/generate_stream", {"inputs": "drop"}, "drop-after=2")
    assert error is not None and len(lines) == 2


def test_error_after_n_tokens_sends_an_in_stream_error(vllm_sim: str, tgi_sim: str) -> None:
    lines, error = stream_lines(vllm_sim, "/v1/completions",
                                {"model": MODEL, "prompt": "e", "max_tokens": 9, "stream": True},
                                "error-after=2")
    assert error is None and lines[-1] == "[DONE]"
    assert json.loads(lines[-2])["error"]["code"] == 500 and len(lines) == 4
    lines, error = stream_lines(tgi_sim, "/generate_stream", {"inputs": "e"}, "error-after=2")
    assert error is None and len(lines) == 3
    assert json.loads(lines[-1])["error_type"] == "generation"
    whole = httpx.post(tgi_sim + "/generate", json={"inputs": "e"}, headers={"x-sim-fault": "error-after=1"})
    assert whole.status_code == 424


def test_slow_and_stalls_still_deliver_everything(vllm_sim: str) -> None:
    body = {"model": MODEL, "prompt": "slow", "max_tokens": 5, "ignore_eos": True, "stream": True}
    plain, _ = stream_lines(vllm_sim, "/v1/completions", body, "")
    slowed, error = stream_lines(vllm_sim, "/v1/completions", body,
                                 "slow=0.005;stall-before=0.02;stall-after=2:0.02")
    assert error is None
    texts = [json.loads(x)["choices"][0]["text"] for x in slowed[:-1]]
    assert texts == [json.loads(x)["choices"][0]["text"] for x in plain[:-1]]


def test_process_faults_admin_endpoint(vllm_sim: str, tgi_sim: str) -> None:
    assert httpx.post(vllm_sim + "/sim/faults", json={"status": 500, "count": 1}).status_code == 200
    assert httpx.post(vllm_sim + "/v1/chat/completions", json=CHAT).status_code == 500
    assert httpx.post(vllm_sim + "/v1/chat/completions", json=CHAT).status_code == 200
    assert httpx.get(vllm_sim + "/sim/faults").json()["remaining"] == 0
    httpx.post(vllm_sim + "/sim/faults", json={"unhealthy": True})
    unhealthy = httpx.get(vllm_sim + "/health")
    assert unhealthy.status_code == 503 and unhealthy.content == b""
    httpx.delete(vllm_sim + "/sim/faults")
    assert httpx.get(vllm_sim + "/health").status_code == 200
    httpx.post(tgi_sim + "/sim/faults", json={"unhealthy": True})
    assert httpx.get(tgi_sim + "/health").json() == {"error": "unhealthy", "error_type": "healthcheck"}
    httpx.delete(tgi_sim + "/sim/faults")
    assert httpx.post(vllm_sim + "/sim/faults", json={"fault": "bogus"}).status_code == 400


def test_client_disconnect_aborts_the_engine_request(slow_vllm_sim: str) -> None:
    body = {"model": MODEL, "prompt": "long", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", slow_vllm_sim + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()  # kept referenced: a collected iterator would close the stream
        received = 0
        while received < 2:
            received += next(lines).startswith("data:")
        assert httpx.get(slow_vllm_sim + "/sim/state").json()["running"] == 1
    state: dict[str, Any] = {}
    for _ in range(200):
        state = httpx.get(slow_vllm_sim + "/sim/state").json()
        if state["running"] == 0 and state["in_flight"] == 0:
            break
        time.sleep(0.02)
    assert state["running"] == 0 and state["in_flight"] == 0
    assert state["free_blocks"] == state["num_blocks"] - 1
    metrics = httpx.get(slow_vllm_sim + "/metrics").text
    abort = 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="sim-test"} 1.0'
    assert abort in metrics


def wait_exit(process: Any) -> int:
    for _ in range(200):
        if process.poll() is not None:
            return int(process.returncode)
        time.sleep(0.02)
    pytest.fail("the sim did not exit")


def test_exit_faults_end_the_process(launch_sim: Any) -> None:
    sim = launch_sim("vllm")
    try:
        answer = httpx.post(sim.url + "/sim/faults", json={"exit": True})
        assert answer.status_code == 200
        assert wait_exit(sim.process) == 1
    finally:
        sim.stop()
    sim = launch_sim("tgi")
    try:
        lines, error = stream_lines(sim.url, "/generate_stream", {"inputs": "die"}, "exit-after=3")
        assert error is not None and len(lines) == 3
        assert wait_exit(sim.process) == 1
    finally:
        sim.stop()


def test_command_line_fault_for_the_next_request_only(launch_sim: Any) -> None:
    sim = launch_sim("vllm", ["--fault", "status=502", "--fault-count", "1"])
    try:
        assert httpx.post(sim.url + "/v1/chat/completions", json=CHAT).status_code == 502
        assert httpx.post(sim.url + "/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        sim.stop()


def test_slow_consumer_of_a_timed_engine_gets_every_token(launch_sim: Any) -> None:
    """Regression: with real step times the engine produces tokens while a slowed stream is still
    writing the previous one; those wake-ups must not be lost (the stream used to hang)."""
    sim = launch_sim("vllm", ["--profile", "fast"])
    try:
        body = {"model": MODEL, "prompt": "slow", "max_tokens": 8, "ignore_eos": True, "stream": True}
        plain, _ = stream_lines(sim.url, "/v1/completions", body, "")
        expected = [json.loads(x)["choices"][0]["text"] for x in plain[:-1]]
        for fault in ("slow=0.01", "stall-after=2:0.05"):
            lines, error = stream_lines(sim.url, "/v1/completions", body, fault)
            assert error is None and lines[-1] == "[DONE]"
            assert [json.loads(x)["choices"][0]["text"] for x in lines[:-1]] == expected
    finally:
        sim.stop()
