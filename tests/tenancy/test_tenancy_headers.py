"""Rate-limit headers: OpenAI's names, Go-style reset durations, Retry-After rounding up."""

from __future__ import annotations

from gateway.tenancy.headers import format_duration, rate_limit_headers, retry_headers
from policies.ratelimit import Report


def test_durations_look_like_openais() -> None:
    cases = {0: "0s", 1: "1ms", 120_000: "120ms", 1_000_000: "1s", 1_500_000: "1.5s", 8_640_001: "8.641s",
             60_000_000: "1m0s", 360_000_000: "6m0s", 90_500_000: "1m30.5s", 3_600_000_000: "1h0m0s"}
    assert {us: format_duration(us) for us in cases} == cases


def test_headers_for_requests_and_tokens() -> None:
    headers = rate_limit_headers(Report(60, 59, 1_000_000), Report(150_000, 149_984, 6_400))
    assert headers == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                       "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "150000",
                       "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "7ms"}
    assert rate_limit_headers(None, None) == {}


def test_retry_after_rounds_up_and_is_at_least_one_second() -> None:
    assert retry_headers(1) == {"retry-after": "1", "retry-after-ms": "1"}
    assert retry_headers(20_000_001) == {"retry-after": "21", "retry-after-ms": "20001"}
