"""Replay of a JSONL trace: one request per line, in file order.

Each line is a JSON object with ``prompt`` (a string) or ``messages`` (OpenAI chat messages with
string content), and optionally ``max_tokens`` (or ``output_tokens``, as in vLLM's custom dataset;
default ``default_output_tokens``), ``timestamp`` (arrival, seconds from the start; used when the
run replays trace timing), ``tenant``, ``session`` and ``turn``. Blank lines are skipped. The first
``num_requests`` requests are replayed (all of them if the trace is shorter); the seed is unused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads.spec import Message, RequestSpec

_ROLES = ("system", "user", "assistant")


class TraceFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TraceWorkload:
    path: Path
    default_output_tokens: int = 128
    name: str = "trace"

    def settings(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path),
                "default_output_tokens": self.default_output_tokens}

    def generate(self, num_requests: int, seed: int) -> Iterator[RequestSpec]:
        index = 0
        with self.path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if index >= num_requests:
                    return
                if not line.strip():
                    continue
                try:
                    yield self._spec(index, json.loads(line))
                except (ValueError, TypeError, KeyError) as exc:
                    raise TraceFormatError(f"{self.path}:{line_number}: {exc}") from exc
                index += 1

    def _spec(self, index: int, row: dict[str, Any]) -> RequestSpec:
        max_tokens = int(row.get("max_tokens", row.get("output_tokens", self.default_output_tokens)))
        timestamp = row.get("timestamp")
        common: dict[str, Any] = {
            "index": index, "max_tokens": max_tokens,
            "timestamp": None if timestamp is None else float(timestamp),
            "tenant": _optional_str(row.get("tenant")), "session": _optional_str(row.get("session")),
            "turn": int(row.get("turn", 0)),
        }
        if "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise TypeError("prompt must be a string")
            return RequestSpec(prompt=row["prompt"], **common)
        messages = tuple(_message(item) for item in row["messages"])
        return RequestSpec(messages=messages, **common)


def _message(item: Any) -> Message:
    role, content = item["role"], item["content"]
    if role not in _ROLES or not isinstance(content, str):
        raise ValueError(f"unsupported message {item!r}: roles {_ROLES} with string content")
    return Message(role, content)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
