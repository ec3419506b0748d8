"""Rate-limit arithmetic, pure and exact: the one decision that the in-memory limiter runs in Python
and the Redis limiter mirrors line for line in Lua (gateway/tenancy/lua.py).

Algorithm: a continuous-refill token bucket (equivalently GCRA) per requests or tokens limit. A bucket
of ``capacity`` units refills at ``capacity`` per ``window_us``; it starts full, so a tenant may burst up
to one window's allowance and then proceeds at the steady rate. Over any run starting from a full
bucket the admitted cost never exceeds ``capacity + capacity * elapsed / window`` (the exactness
property the tests check). Levels are integers scaled by ``window_us`` (one unit is 1/window_us of a
token), so refill is ``elapsed_us * capacity`` with no division and no rounding drift; every value
stays below 2**53 so Lua's doubles hold it exactly. A daily budget is a fixed window (UTC days) and
concurrency is a count of live leases. A request is admitted only when every limit admits it, and
then every limit is charged (all or nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

# Largest scaled level allowed: leaves room for a debt of one full bucket below zero.
MAX_SCALED = 2**52
CONCURRENCY_RETRY_US = 1_000_000


class LimitKind(IntEnum):
    REQUESTS = 1  # token bucket, each request costs 1
    TOKENS = 2  # token bucket, a request costs prompt + completion tokens
    QUOTA = 3  # fixed window (a UTC day for daily budgets), costs tokens
    CONCURRENCY = 4  # live leases, each request holds 1 until settled or expired


@dataclass(frozen=True, slots=True)
class Limit:
    kind: LimitKind
    capacity: int
    window_us: int = 0  # buckets: refill period; quotas: window length; concurrency: unused

    @property
    def full(self) -> int:
        return self.capacity * self.window_us


@dataclass(frozen=True, slots=True)
class Demand:
    prompt_tokens: int
    completion_tokens: int  # output tokens to reserve
    clamp: bool = False  # lower completion_tokens to what is left instead of refusing
    min_completion_tokens: int = 1


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    completion_tokens: int  # granted output reservation (lower than asked when clamped)
    retry_after_us: int | None  # refused: wait before retrying; None when it can never fit
    refused_index: int  # index of the first limit that refused, -1 when admitted


def floor_div(a: int, b: int) -> int:
    return a // b


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def scaled_limit_ok(capacity: int, window_us: int) -> bool:
    """Whether a bucket's numbers stay exact in a double (checked when config loads)."""
    return capacity * window_us <= MAX_SCALED


def bucket_refill(level: int, updated_us: int, now_us: int, capacity: int, window_us: int) -> int:
    full = capacity * window_us
    if level >= full:
        return full
    elapsed = now_us - updated_us
    if elapsed <= 0:
        return level
    if elapsed >= ceil_div(full - level, capacity):
        return full
    return level + elapsed * capacity


def bucket_rescale(level: int, old_window_us: int, window_us: int) -> int:
    """A bucket stored under another window (config changed): keep its whole tokens."""
    if old_window_us == window_us:
        return level
    return floor_div(level, old_window_us) * window_us


def bucket_adjust(level: int, delta_tokens: int, capacity: int, window_us: int) -> int:
    """Charge (delta > 0) or refund (delta < 0) after admission: never above full, debt of at most
    one full bucket."""
    full = capacity * window_us
    return max(-full, min(full, level - delta_tokens * window_us))


def bucket_remaining(level: int, window_us: int) -> int:
    return max(0, floor_div(level, window_us))


def bucket_reset_us(level: int, capacity: int, window_us: int) -> int:
    """Time until the bucket is full again (OpenAI's x-ratelimit-reset-*)."""
    return max(0, ceil_div(capacity * window_us - level, capacity))


def bucket_wait_us(level: int, cost: int, capacity: int, window_us: int) -> int | None:
    if cost > capacity:
        return None
    return max(0, ceil_div(cost * window_us - level, capacity))


def quota_period(now_us: int, window_us: int) -> int:
    return floor_div(now_us, window_us)


def quota_reset_us(now_us: int, window_us: int) -> int:
    return (quota_period(now_us, window_us) + 1) * window_us - now_us


def _token_room(limits: Sequence[Limit], state: Sequence[int], prompt: int) -> int | None:
    """Output tokens every token limit could still grant beyond the prompt (None: no token limit)."""
    room: int | None = None
    for limit, value in zip(limits, state, strict=True):
        if limit.kind == LimitKind.TOKENS:
            left = floor_div(value, limit.window_us) - prompt
        elif limit.kind == LimitKind.QUOTA:
            left = limit.capacity - value - prompt
        else:
            continue
        room = left if room is None else min(room, left)
    return room


def decide(limits: Sequence[Limit], state: Sequence[int], now_us: int, demand: Demand) -> Decision:
    """Admit or refuse one request against every applicable limit.

    ``state[i]`` is limit i's current value: a bucket's level (refilled to ``now_us``), a quota's use
    in the current window, or the number of live leases.
    """
    completion = demand.completion_tokens
    if demand.clamp:
        room = _token_room(limits, state, demand.prompt_tokens)
        if room is not None and room < completion:
            completion = max(room, demand.min_completion_tokens)
    cost = demand.prompt_tokens + completion
    refused = -1
    wait = 0
    impossible = False
    for index, (limit, value) in enumerate(zip(limits, state, strict=True)):
        if limit.kind == LimitKind.REQUESTS:
            ok = value >= limit.window_us
            need = bucket_wait_us(value, 1, limit.capacity, limit.window_us)
        elif limit.kind == LimitKind.TOKENS:
            ok = cost <= limit.capacity and value >= cost * limit.window_us
            need = bucket_wait_us(value, cost, limit.capacity, limit.window_us)
        elif limit.kind == LimitKind.QUOTA:
            ok = value + cost <= limit.capacity
            need = None if cost > limit.capacity else quota_reset_us(now_us, limit.window_us)
        else:
            ok = value < limit.capacity
            need = CONCURRENCY_RETRY_US
        if ok:
            continue
        if refused < 0:
            refused = index
        if need is None:
            impossible = True
        else:
            wait = max(wait, need)
    if refused < 0:
        return Decision(True, completion, 0, -1)
    return Decision(False, completion, None if impossible else wait, refused)


def charge(limit: Limit, value: int, cost: int) -> int:
    """A limit's value after admitting a request of ``cost`` tokens."""
    if limit.kind == LimitKind.REQUESTS:
        return value - limit.window_us
    if limit.kind == LimitKind.TOKENS:
        return value - cost * limit.window_us
    if limit.kind == LimitKind.QUOTA:
        return value + cost
    return value + 1


@dataclass(frozen=True, slots=True)
class Report:
    """The numbers behind OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers."""

    limit: int
    remaining: int
    reset_us: int


def report(limits: Sequence[Limit], state: Sequence[int], kind: LimitKind) -> Report | None:
    """The tightest bucket of ``kind`` (fewest remaining, then smallest): what headers show."""
    best: Report | None = None
    for limit, value in zip(limits, state, strict=True):
        if limit.kind != kind:
            continue
        candidate = Report(limit.capacity, bucket_remaining(value, limit.window_us),
                           bucket_reset_us(value, limit.capacity, limit.window_us))
        if best is None or (candidate.remaining, candidate.limit) < (best.remaining, best.limit):
            best = candidate
    return best
