"""The workers benchmark's stand-in setup (``--stand-ins``): nginx answering as a vLLM engine is a
valid engine to the real gateway (the official openai client gets the stand-in's answer through
it), wrk's report is read back, and a short run of the benchmark itself with the full pipeline and 2
workers answers every request, each from a worker that says which, and writes its JSON and plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis
from openai import OpenAI

from benchmarks import workers
from benchmarks.nginx_engine import STAND_IN_TEXT, chat_body, completion_body, nginx_config, nginx_quoted
from benchmarks.overhead import drop_redis_keys
from benchmarks.wrk_load import parse_report, wrk_script

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and shutil.which("/usr/sbin/nginx") is None,
                                 reason="nginx not installed (scripts/test.sh installs it)")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk not installed (scripts/test.sh installs it)")


def test_stand_in_bodies_are_openai_answers_and_survive_nginx_quoting() -> None:
    completion, chat = json.loads(completion_body("m")), json.loads(chat_body("m"))
    assert completion["choices"][0]["text"] == chat["choices"][0]["message"]["content"] == STAND_IN_TEXT
    assert completion["usage"]["completion_tokens"] == 16
    assert nginx_quoted("a'b\nc\\d") == "'a\\'b\\nc\\\\d'"
    with pytest.raises(ValueError, match="expand"):
        nginx_quoted("costs $5")
    config = nginx_config(8123, "m", Path("/tmp/x"))
    assert "listen 127.0.0.1:8123;" in config and "worker_processes 1;" in config


def test_wrk_report_is_read_from_the_script_lines() -> None:
    stdout = """Running 1s test @ http://127.0.0.1:1
WRK-JSON {"statuses": {"200": 90, "429": 8}}
WRK-JSON {"workers": {"0": 50, "1": 48}}
WRK-JSON {"summary": {"requests": 98, "duration_us": 1000000, "connect_errors": 0, "read_errors": 1, \
"write_errors": 0, "timeouts": 1, "latency_p50_us": 1500, "latency_p99_us": 9000}}
Requests/sec: 98.0
"""
    report = parse_report(stdout)
    assert (report.ok, report.failed, report.workers) == (90, 10, {"0": 50, "1": 48})
    assert (report.latency_p50_ms, report.latency_p99_ms, report.duration_s) == (1.5, 9.0, 1.0)
    with pytest.raises(ValueError, match="no report"):
        parse_report("unable to connect")
    script = wrk_script([b'{"prompt": "a"}', b'{"prompt": "b"}'], "/v1/completions",
                        {"Authorization": "Bearer k"})
    assert "[====[{\"prompt\": \"b\"}]====]" in script and "[ [====[Authorization]====] ]" in script


@needs_nginx
def test_the_gateway_relays_the_nginx_stand_in_as_a_vllm_engine(tmp_path: Path) -> None:
    engines = workers.start_engines(True, tmp_path)
    gateway = None
    try:
        gateway, key = workers.start_gateway(engines, 1, tmp_path, full=True)
        assert key is not None
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
        completion = client.completions.create(model=workers.MODEL, prompt="hello there", max_tokens=16)
        assert completion.choices[0].text == STAND_IN_TEXT
        chat = client.chat.completions.create(model=workers.MODEL, max_tokens=16,
                                              messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == STAND_IN_TEXT
        assert chat.usage is not None and chat.usage.completion_tokens == 16
    finally:
        for launcher in [*([gateway] if gateway else []), *engines]:
            launcher.stop()
        drop_redis_keys(workers.redis_prefix())


@needs_nginx
@needs_wrk
def test_a_short_stand_in_run_answers_everything_on_both_workers(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    assert workers.main(["--stand-ins", "--pipeline", "full", "--quick", "--seconds", "2",
                         "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert {row["workers"] for row in results["runs"]} == {1, 2}
    for row in results["runs"]:
        assert row["failed"] == 0 and row["statuses"] == {"200": row["requests"]} and row["requests"] > 100
        assert row["gateway_cpu_ms_per_request"] > 0 and row["redis_cpu_ms_per_request"] > 0
    # Every answer names its worker. Not asserted: that both got some. wrk opens its 64 connections at
    # once and a worker that is awake first may accept all of them (a CI run with other jobs on the 2
    # cores saw worker 1 take every one); tests/e2e/test_workers.py shows that both workers serve.
    two = results["summary"]["workers_2"]["requests_per_worker"]
    assert set(two) <= {"0", "1"} and sum(two.values()) == sum(
        row["requests"] for row in results["runs"] if row["workers"] == 2)
    assert results["summary"]["two_workers_if_cost_unchanged_requests_per_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    with redis.Redis() as client:
        assert not list(client.scan_iter(match=f"{workers.redis_prefix()}*")), "left keys in Redis"


def row(workers: int, rate: float, gateway_ms: float, others_ms: float,
        redis_ms: float = 0.0) -> dict[str, object]:
    return {"workers": workers, "requests": round(rate), "failed": 0, "duration_s": 1.0,
            "requests_per_s": rate, "e2el_p50_ms": 1.0, "gateway_cpu_ms_per_request": gateway_ms,
            "gateway_cpu_cores": rate * gateway_ms / 1000, "engines_cpu_ms_per_request": others_ms,
            "loadgen_cpu_ms_per_request": 0.0, "redis_cpu_ms_per_request": redis_ms,
            "requests_per_worker": {str(i): round(rate) // workers for i in range(workers)}}


def test_each_worker_count_is_held_to_n_times_one_worker_or_to_the_cores_whichever_is_lower() -> None:
    # One worker: 5,000 req/s at 0.2 ms gateway + 0.04 engines + 0.01 Redis = 0.25 ms of machine per request.
    rows = [row(1, 5000, 0.2, 0.04, 0.01), row(2, 9000, 0.2, 0.04, 0.01), row(4, 15000, 0.2, 0.04, 0.01)]
    on_16_cores = workers.summarize(rows, cores=16)
    assert on_16_cores["ceiling_requests_per_s"] == {"1": 5000, "2": 10000, "4": 20000}
    assert on_16_cores["scaling"] == {"1": 1.0, "2": 1.8, "4": 3.0}
    assert on_16_cores["share_of_ceiling_reached"]["4"] == 0.75
    assert on_16_cores["scaling_ratio"] == 1.8 and on_16_cores["share_of_that_reached"] == 0.9
    assert abs(on_16_cores["workers_4"]["redis_cpu_cores"] - 0.15) < 1e-9
    on_2_cores = workers.summarize(rows, cores=2)  # 2 cores / 0.25 ms: 8,000 req/s at most
    assert on_2_cores["ceiling_requests_per_s"] == {"1": 5000, "2": 8000, "4": 8000}
    assert on_2_cores["two_workers_if_cost_unchanged_requests_per_s"] == 8000


def test_worker_counts_must_include_one_worker_and_go_with_the_stand_ins() -> None:
    with pytest.raises(SystemExit):
        workers.main(["--stand-ins", "--worker-counts", "2,4"])
    with pytest.raises(SystemExit):
        workers.main(["--worker-counts", "1,4"])
