"""Rate-limit response headers with OpenAI's names: ``x-ratelimit-{limit,remaining,reset}-requests``
and ``-tokens`` (reset as a Go-style duration such as ``1s``, ``6m0s``, ``120ms``), plus on refusals
``retry-after`` (whole seconds, at least 1) and ``retry-after-ms`` (which the openai SDK prefers).
Values describe the tightest applicable per-minute bucket; absent when no such limit applies."""

from __future__ import annotations

from policies.ratelimit import Report, ceil_div


def format_duration(us: int) -> str:
    """Go's time.Duration format rounded up to milliseconds: 0s, 120ms, 1.5s, 6m0s, 1h0m0s."""
    ms = ceil_div(max(0, us), 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def rate_limit_headers(requests: Report | None, tokens: Report | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for suffix, report in (("requests", requests), ("tokens", tokens)):
        if report is None:
            continue
        headers[f"x-ratelimit-limit-{suffix}"] = str(report.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(report.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = format_duration(report.reset_us)
    return headers


def retry_headers(retry_after_us: int) -> dict[str, str]:
    return {"retry-after": str(max(1, ceil_div(retry_after_us, 1_000_000))),
            "retry-after-ms": str(max(1, ceil_div(retry_after_us, 1000)))}
