"""Fault injection for the simulated engine: per request, per process, from the command line.

Per request, the header ``x-sim-fault`` (the gateway never forwards it from clients) holds
``key=value`` pairs joined by ``;``, e.g. ``x-sim-fault: stall-before=0.5;drop-after=3``:

    status=CODE      fail before the first token with HTTP CODE, in the dialect's error shape
    drop-after=N     close the connection abruptly once N tokens were sent (no finish, no [DONE]);
                     a non-streaming request is dropped without a response
    error-after=N    after N tokens, send the dialect's in-stream error event and end the stream
                     (non-streaming: an error response instead of the result)
    stall-before=T   wait T seconds before the first token (a stream has already sent its headers)
    stall-after=N:T  after N tokens, stall T seconds, then go on
    slow=S           S extra seconds before every token
    exit-after=N     the whole process exits (os._exit) once N tokens of this request were sent

Per process, ``POST /sim/faults`` with JSON replaces the process fault state: the keys above (``-`` or
``_``), or ``"fault": "<header grammar>"``, plus ``"count": N`` (apply to the next N requests only;
default every request), ``"unhealthy": true`` (``/health`` answers 503) and ``"exit": true`` (the
process exits right after answering). ``DELETE /sim/faults`` clears it, ``GET /sim/faults`` shows it.
The command line has the same (``--fault``, ``--fault-count``, ``--unhealthy``). A request's header
overrides the process fault key by key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

HEADER = "x-sim-fault"


class FaultSyntaxError(ValueError):
    pass


class DropConnection(Exception):
    """Raised to a handler: abort the transport now."""


class InjectedStreamError(Exception):
    """Raised to a handler: answer with the dialect's generation error."""


@dataclass(frozen=True)
class FaultSpec:
    status: int | None = None
    drop_after: int | None = None
    error_after: int | None = None
    stall_before: float = 0.0
    stall_after: tuple[int, float] | None = None
    slow: float = 0.0
    exit_after: int | None = None

    @property
    def empty(self) -> bool:
        return self == FaultSpec()

    @property
    def per_token(self) -> bool:
        """Whether any fault acts on individual tokens (then batches are split into single tokens)."""
        return (self.slow > 0 or self.stall_after is not None or self.drop_after is not None
                or self.error_after is not None or self.exit_after is not None)

    def merged(self, override: FaultSpec) -> FaultSpec:
        changes = {f.name: getattr(override, f.name) for f in fields(self)
                   if getattr(override, f.name) != getattr(FaultSpec(), f.name)}
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, 0.0)}


def _count(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FaultSyntaxError(f"{key} needs an integer, got {value!r}") from None
    if number < 0:
        raise FaultSyntaxError(f"{key} must be >= 0")
    return number


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise FaultSyntaxError(f"{key} needs seconds, got {value!r}") from None
    if not number >= 0:
        raise FaultSyntaxError(f"{key} must be >= 0")
    return number


def parse_fault(text: str) -> FaultSpec:
    """Parse the ``x-sim-fault`` grammar (see the module docstring)."""
    values: dict[str, Any] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("_", "-")
        value = value.strip()
        if not sep:
            raise FaultSyntaxError(f"fault item {item!r} is not key=value")
        if key == "status":
            status = _count(key, value)
            if not 400 <= status <= 599:
                raise FaultSyntaxError("status must be an HTTP error status (400-599)")
            values["status"] = status
        elif key in ("drop-after", "error-after", "exit-after"):
            values[key.replace("-", "_")] = _count(key, value)
        elif key in ("stall-before", "slow"):
            values[key.replace("-", "_")] = _seconds(key, value)
        elif key == "stall-after":
            tokens, colon, seconds = value.partition(":")
            if not colon:
                raise FaultSyntaxError("stall-after needs N:T (tokens:seconds)")
            values["stall_after"] = (_count(key, tokens), _seconds(key, seconds))
        else:
            raise FaultSyntaxError(f"unknown fault key {key!r}")
    return FaultSpec(**values)


def spec_from_json(body: Mapping[str, Any]) -> FaultSpec:
    """The request-fault part of a ``POST /sim/faults`` body."""
    items = [str(body["fault"])] if body.get("fault") else []
    for key, value in body.items():
        name = key.replace("_", "-")
        if name in ("fault", "count", "unhealthy", "exit"):
            continue
        if name == "stall-after" and isinstance(value, list | tuple) and len(value) == 2:
            value = f"{value[0]}:{value[1]}"
        items.append(f"{name}={value}")
    return parse_fault(";".join(items))


class ProcessFaults:
    """The process-wide fault state: a spec for the next ``remaining`` requests (None: all)."""

    def __init__(self, spec: FaultSpec | None = None, count: int | None = None,
                 unhealthy: bool = False) -> None:
        self.spec = spec if spec is not None and not spec.empty else None
        self.remaining = count
        self.unhealthy = unhealthy

    def clear(self) -> None:
        self.spec, self.remaining, self.unhealthy = None, None, False

    def for_request(self, header: str | None) -> FaultSpec:
        """The faults one request gets (the header overrides the process spec); raises on bad syntax."""
        spec = FaultSpec()
        if self.spec is not None and (self.remaining is None or self.remaining > 0):
            spec = self.spec
            if self.remaining is not None:
                self.remaining -= 1
        if header:
            spec = spec.merged(parse_fault(header))
        return spec

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.spec.to_json() if self.spec else None, "remaining": self.remaining,
                "unhealthy": self.unhealthy}


async def apply_faults(spec: FaultSpec, batches: AsyncIterator[tuple[list[str], bool]]
                       ) -> AsyncIterator[tuple[list[str], bool]]:
    """Pass ``(tokens, finished)`` batches through, enforcing the token-level faults of ``spec``.

    With any per-token fault the batches are split into single tokens so counts are exact. The last
    batch of a request may be empty (an EOS); reaching it after N tokens still triggers ``*-after``."""
    if spec.stall_before > 0:
        await asyncio.sleep(spec.stall_before)
    if not spec.per_token:
        async for item in batches:
            yield item
        return
    sent = 0
    async for batch, done in batches:
        if not batch:
            _check_limits(spec, sent)
            yield [], done
            continue
        last = len(batch) - 1
        for index, token in enumerate(batch):
            _check_limits(spec, sent)
            if spec.stall_after is not None and sent == spec.stall_after[0] and spec.stall_after[1] > 0:
                await asyncio.sleep(spec.stall_after[1])
            if spec.slow > 0:
                await asyncio.sleep(spec.slow)
            yield [token], done and index == last
            sent += 1


def _check_limits(spec: FaultSpec, sent: int) -> None:
    if spec.exit_after is not None and sent >= spec.exit_after:
        os._exit(1)
    if spec.drop_after is not None and sent >= spec.drop_after:
        raise DropConnection
    if spec.error_after is not None and sent >= spec.error_after:
        raise InjectedStreamError
