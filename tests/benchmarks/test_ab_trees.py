"""benchmarks.ab_trees: a short real run (the working tree against HEAD, one round at one connection
count) answers every request through both gateways, pairs the rounds, writes its JSON and plot, and
removes the base's temporary worktree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import ab_trees

pytestmark = [
    pytest.mark.skipif(shutil.which("nginx") is None and shutil.which("/usr/sbin/nginx") is None,
                       reason="nginx not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(shutil.which("git") is None or not (ab_trees.ROOT / ".git").exists(),
                       reason="needs the project's git checkout"),
]


def worktrees() -> str:
    listing = subprocess.run(["git", "-C", str(ab_trees.ROOT), "worktree", "list"], capture_output=True,
                             text=True, check=True)
    return listing.stdout


def test_a_short_ab_run_pairs_its_rounds_and_cleans_up(tmp_path: Path) -> None:
    before = worktrees()
    out = tmp_path / "ab.json"
    assert ab_trees.main(["--base", "HEAD", "--variant", "off", "--connections", "4", "--rounds", "2",
                          "--seconds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert worktrees() == before  # the base's worktree is gone
    base = result["settings"]["base_label"]
    assert base.startswith("base ")
    summary = result["summary"]["c=4"]
    for version in (base, ab_trees.WORKING):
        assert summary[version]["failed"] == 0
        assert summary[version]["gateway_cpu_ms_per_request"] > 0
        assert summary[version]["requests_per_s"] > 100
    assert summary["paired"]["rounds"] == 2
    assert 0 <= summary["paired"]["rounds_working_tree_used_less_cpu"] <= 2
    assert {(r["version"], r["round"]) for r in result["runs"]} == {
        (version, index) for version in (base, ab_trees.WORKING) for index in (0, 1)}


def test_a_short_stream_run_against_the_simulator_with_timed_steps(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    assert ab_trees.main(["--base", "HEAD", "--variant", "off", "--engine", "sim", "--mode", "stream",
                          "--engine-step-ms", "1", "--connections", "4", "--rounds", "1", "--seconds", "1",
                          "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["mode"] == "stream"
    assert result["settings"]["engine"] == "sim, vllm dialect, 1 ms steps, core 1"
    summary = result["summary"]["c=4"]
    for version in (result["settings"]["base_label"], ab_trees.WORKING):
        assert summary[version]["failed"] == 0
        # 16 steps of at least 1 ms per stream: at most ~250 streams/s on each of the 4 connections.
        assert 10 < summary[version]["requests_per_s"] < 4 * 1000 / 16


def test_streams_need_the_simulator(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--engine sim"):
        ab_trees.measure({}, "off", [1], 1, 1.0, tmp_path, "nginx", "stream")
