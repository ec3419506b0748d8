"""One request's measurements (``RequestRecord``) and their JSON form.

Times are seconds: ``arrival`` (when the arrival process released the request) and ``start`` (just
before the POST) are offsets from the run's start; ``ttft``, ``e2el`` and every ``itl`` gap are
durations from ``start`` (see reference/benchmarks.md). Token counts come from the response's
``usage`` only (None when the server sent none). ``tpot`` is derived: ``(e2el - ttft) / (n - 1)``
for ``n = completion_tokens > 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    index: int
    arrival: float
    start: float
    max_tokens: int
    success: bool = False
    error: str | None = None
    http_status: int | None = None
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2el: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    tenant: str | None = None
    session: str | None = None
    turn: int = 0
    prompt_words: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None

    @property
    def tpot(self) -> float | None:
        n = self.completion_tokens
        if not self.success or n is None or n <= 1 or self.ttft is None or self.e2el is None:
            return None
        return (self.e2el - self.ttft) / (n - 1)

    @property
    def client_queue(self) -> float:
        """Time the request waited in the client (concurrency limit, previous session turn)."""
        return self.start - self.arrival

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "index": self.index, "tenant": self.tenant, "session": self.session, "turn": self.turn,
            "arrival_s": self.arrival, "start_s": self.start, "success": self.success,
            "error": self.error, "http_status": self.http_status, "ttft_s": self.ttft,
            "tpot_s": self.tpot, "e2el_s": self.e2el, "itl_s": self.itl,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens, "max_tokens": self.max_tokens,
            "prompt_words": self.prompt_words,
        }
        if self.headers:
            row["headers"] = self.headers
        if self.text is not None:
            row["text"] = self.text
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> RequestRecord:
        return cls(index=row["index"], arrival=row["arrival_s"], start=row["start_s"],
                   max_tokens=row["max_tokens"], success=row["success"], error=row.get("error"),
                   http_status=row.get("http_status"), ttft=row.get("ttft_s"), itl=list(row.get("itl_s", [])),
                   e2el=row.get("e2el_s"), prompt_tokens=row.get("prompt_tokens"),
                   completion_tokens=row.get("completion_tokens"), cached_tokens=row.get("cached_tokens"),
                   tenant=row.get("tenant"), session=row.get("session"), turn=row.get("turn", 0),
                   prompt_words=row.get("prompt_words"), headers=dict(row.get("headers", {})),
                   text=row.get("text"))
