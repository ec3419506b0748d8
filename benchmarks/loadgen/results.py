"""The results file: one JSON document per invocation, holding every run of a sweep.

    {"schema": "llm-gateway-loadgen/1", "created": ISO time, "command": argv,
     "settings": {...everything the invocation was given...},
     "machine": {cpu_count, platform, python, hostname, loadavg_start, loadavg_end},
     "git": {"commit", "dirty"},
     "runs": [{"label", "settings": RunResult.settings, "started_at", "aggregate", "records": [...]}]}
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen.records import RequestRecord
from benchmarks.loadgen.runner import RunResult

SCHEMA = "llm-gateway-loadgen/1"
REPO_ROOT = Path(__file__).resolve().parents[2]


def machine_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "python": sys.version.split()[0],
            "python_implementation": platform.python_implementation(), "hostname": socket.gethostname(),
            "loadavg": list(os.getloadavg())}


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def run_entry(label: str, result: RunResult, slos: Mapping[str, float] | None = None) -> dict[str, Any]:
    return {"label": label, "settings": result.settings, "started_at": result.started_at,
            "aggregate": result.aggregate(slos), "records": [r.to_json() for r in result.records]}


def build_document(settings: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
                   machine: Mapping[str, Any], command: Sequence[str] | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": list(command) if command is not None else sys.argv, "settings": dict(settings),
            "machine": dict(machine), "git": git_state(), "runs": list(runs)}


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=1) + "\n", encoding="utf-8")


def load_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if document.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a load generator results file (schema {document.get('schema')!r})")
    return document


def records_of(run: Mapping[str, Any]) -> list[RequestRecord]:
    return [RequestRecord.from_json(row) for row in run["records"]]


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
