"""Admission end to end at the component level, on both stores: authentication, model authorization,
limits across scopes, rate-limit headers and 429s, clamping, and settlement exactly once (twice
called, cancelled callers, streams cut by the client or failing engines) with charged tokens equal
to the usage reported."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import AuthenticationError, PermissionDeniedError, RateLimitError, UpstreamStreamError
from gateway.tenancy import Admission, Principal, estimate_tokens
from gateway.tenancy.keys import generate_key

HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def tenant(name: str, **limits: Any) -> dict[str, Any]:
    options = ("models", "model_limits", "clamp_max_tokens")
    extra: dict[str, Any] = {k: limits.pop(k) for k in options if k in limits}
    return {"name": name, "limits": limits, **extra}


def test_estimate_tokens_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert [estimate_tokens(t) for t in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]


async def test_auth_disabled_is_anonymous_and_loud(make_admission: Any, store_kind: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="gateway.tenancy"):
        admission = make_admission(store_kind, registry=registry)
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    assert registry.get_sample_value("gateway_auth_enabled") == 0
    assert await admission.authenticate({}) == Principal(tenant="default")
    lease = await admission.admit(Principal("default"), "any-model", 10, None)
    assert lease.headers == {} and lease.max_tokens is None  # no limits configured
    await lease.settle(10, 5)


async def test_keys_authenticate_by_bearer_or_x_api_key(make_admission: Any, store_kind: str) -> None:
    new = generate_key()
    admission = make_admission(store_kind, auth_enabled=True, tenants=[tenant("acme")],
                               keys=[{"id": new.key_id, "hash": new.key_hash, "tenant": "acme"}])
    expected = Principal(tenant="acme", key_id=new.key_id)
    assert await admission.authenticate({"authorization": f"Bearer {new.key}"}) == expected
    assert await admission.authenticate({"Authorization": f"bearer  {new.key} "}) == expected
    assert await admission.authenticate({"x-api-key": new.key}) == expected
    other = generate_key()
    wrong_secret = new.key[: -len("x")] + ("A" if new.key[-1] != "A" else "B")
    cases = [({}, "missing_api_key"), ({"authorization": "Basic abc"}, "missing_api_key"),
             ({"authorization": f"Bearer {other.key}"}, "invalid_api_key"),
             ({"authorization": f"Bearer {wrong_secret}"}, "invalid_api_key"),
             ({"x-api-key": "sk-not-ours"}, "invalid_api_key")]
    for headers, code in cases:
        with pytest.raises(AuthenticationError) as caught:
            await admission.authenticate(headers)
        assert caught.value.http_status == 401 and caught.value.code == code
        assert caught.value.to_body()["error"]["type"] == "authentication_error"


async def test_models_are_authorized_per_tenant(make_admission: Any) -> None:
    admission = make_admission("memory", tenants=[tenant("default", models=["llama-*", "qwen"])])
    principal = Principal("default")
    admission.authorize_model(principal, "llama-3-8b")
    admission.authorize_model(principal, "qwen")
    with pytest.raises(PermissionDeniedError) as caught:
        admission.authorize_model(principal, "qwen-large")
    assert caught.value.http_status == 403 and caught.value.param == "model"


async def test_headers_on_admission_and_429_with_retry_after(make_admission: Any, store_kind: str) -> None:
    admission = make_admission(store_kind, tenants=[tenant("default", requests_per_minute=2,
                                                           tokens_per_minute=1000)])
    principal = Principal("default")
    lease = await admission.admit(principal, "m", 100, 200)
    assert set(HEADERS) <= set(lease.headers)
    assert lease.headers["x-ratelimit-limit-requests"] == "2"
    assert lease.headers["x-ratelimit-remaining-requests"] == "1"
    assert lease.headers["x-ratelimit-remaining-tokens"] == "700"
    assert lease.headers["x-ratelimit-reset-requests"] == "30s"
    assert lease.headers["x-ratelimit-reset-tokens"] == "18s"
    await (await admission.admit(principal, "m", 10, 10)).settle(10, 10)
    with pytest.raises(RateLimitError) as caught:
        await admission.admit(principal, "m", 10, 10)
    error = caught.value
    assert error.http_status == 429 and error.to_body()["error"]["type"] == "rate_limit_error"
    assert set(HEADERS) <= set(error.headers)
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["retry-after"] == "30" and 29_000 < int(error.headers["retry-after-ms"]) <= 30_000
    assert "requests per minute" in error.message


async def test_too_large_requests_get_429_without_retry_after(make_admission: Any) -> None:
    admission = make_admission("memory", tenants=[tenant("default", tokens_per_minute=100)])
    with pytest.raises(RateLimitError) as caught:
        await admission.admit(Principal("default"), "m", 50, 100)
    assert "retry-after" not in caught.value.headers and "too large" in caught.value.message


async def test_clamp_max_tokens_admits_with_what_is_left(make_admission: Any, store_kind: str) -> None:
    admission = make_admission(store_kind, tenants=[tenant("default", tokens_per_minute=1000,
                                                           clamp_max_tokens=True)])
    principal = Principal("default")
    first = await admission.admit(principal, "m", 100, 600)
    assert first.max_tokens == 600 and first.reserved_tokens == 700
    second = await admission.admit(principal, "m", 100, 600)
    assert second.max_tokens == 200 and second.reserved_tokens == 300  # what was left
    with pytest.raises(RateLimitError):
        await admission.admit(principal, "m", 10, None)  # not even min_clamped_tokens left
    await first.settle(100, 10)
    unbounded = await admission.admit(principal, "m", 100, None)
    assert unbounded.max_tokens == 490  # clamped to the reservation it got


async def test_scopes_global_model_and_key_limits_all_apply(make_admission: Any, store_kind: str) -> None:
    key = generate_key()
    admission = make_admission(
        store_kind, auth_enabled=True, global_limits={"requests_per_minute": 5},
        tenants=[tenant("a", requests_per_minute=100, model_limits={"small": {"requests_per_minute": 1}}),
                 tenant("b")],
        keys=[{"id": key.key_id, "hash": key.key_hash, "tenant": "b", "limits": {"requests_per_minute": 2}}])
    a, b = Principal("a"), await admission.authenticate({"x-api-key": key.key})
    await admission.admit(a, "small", 1, 1)
    with pytest.raises(RateLimitError) as model_refusal:
        await admission.admit(a, "small", 1, 1)
    assert "per-model" in model_refusal.value.message
    await admission.admit(a, "big", 1, 1)
    await admission.admit(b, "big", 1, 1)
    await admission.admit(b, "big", 1, 1)
    with pytest.raises(RateLimitError) as key_refusal:
        await admission.admit(b, "big", 1, 1)
    assert "limit of this API key" in key_refusal.value.message
    await admission.admit(a, "big", 1, 1)  # 5th admission overall
    with pytest.raises(RateLimitError) as global_refusal:
        await admission.admit(a, "big", 1, 1)
    assert "gateway-wide" in global_refusal.value.message


async def test_settle_counts_once_even_when_called_twice_or_cancelled(make_admission: Any,
                                                                      store_kind: str) -> None:
    admission = make_admission(store_kind, tenants=[tenant("default", tokens_per_minute=10_000,
                                                           concurrent_requests=5)])
    principal = Principal("default")
    lease = await admission.admit(principal, "m", 100, 100)
    await asyncio.gather(lease.settle(100, 30), lease.settle(100, 30), lease.release_unused())
    await lease.settle(1, 1)
    cancelled = await admission.admit(principal, "m", 100, 100)
    task = asyncio.ensure_future(cancelled.settle(100, 70))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.2)  # the settlement itself ran to completion, shielded from the caller
    unused = await admission.admit(principal, "m", 100, 100)
    await unused.release_unused()
    usage = await admission.usage("default")
    assert (usage.charged_tokens, usage.open_leases) == (130 + 170, 0)


async def engine(tokens: int, fail_after: int | None) -> AsyncIterator[str]:
    for index in range(tokens):
        if fail_after is not None and index == fail_after:
            raise UpstreamStreamError("engine died mid-stream")
        await asyncio.sleep(0.005)
        yield "tok"


async def relay(admission: Admission, principal: Principal, prompt: int, max_tokens: int,
                fail_after: int | None, reported: list[int]) -> None:
    """What the app does: admit, stream, settle in `finally` with the usage counted so far."""
    lease = await admission.admit(principal, "m", prompt, max_tokens)
    produced = 0
    try:
        async for _ in engine(max_tokens, fail_after):
            produced += 1
    finally:
        reported.append(prompt + produced)
        await lease.settle(prompt, produced)


async def test_charged_tokens_equal_reported_usage_for_cut_and_failed_streams(make_admission: Any,
                                                                             store_kind: str) -> None:
    registry = CollectorRegistry()
    admission = make_admission(store_kind, registry=registry, tenants=[tenant(
        "default", tokens_per_minute=1_000_000, daily_tokens=1_000_000, concurrent_requests=100)])
    principal = Principal("default")
    rng = random.Random(7)
    reported: list[int] = []
    tasks = []
    for index in range(60):
        fail_after = rng.randint(0, 20) if index % 3 == 1 else None
        tasks.append(asyncio.ensure_future(relay(admission, principal, rng.randint(5, 50), rng.randint(5, 40),
                                                 fail_after, reported)))
    await asyncio.sleep(0)
    tasks[-1].cancel()  # the client leaves while its admission is in flight
    await asyncio.sleep(0.1)
    for task in tasks[::3]:
        task.cancel()  # the client disconnects mid-stream
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) > 0
    assert sum(isinstance(r, UpstreamStreamError) for r in results) > 0
    await asyncio.sleep(0.1)
    usage = await admission.usage("default")
    assert len(reported) >= 30
    assert usage.charged_tokens == sum(reported) and usage.open_leases == 0
    assert registry.get_sample_value("gateway_ratelimit_settled_tokens_total",
                                     {"tenant": "default"}) == sum(reported)
    assert registry.get_sample_value("gateway_ratelimit_active_leases") == 0


async def test_heartbeat_keeps_long_requests_leased(make_admission: Any, store_kind: str) -> None:
    admission = make_admission(store_kind, lease_ttl_s=0.3,
                               tenants=[tenant("default", concurrent_requests=1)])
    principal = Principal("default")
    long_request = await admission.admit(principal, "m", 1, 1)
    await asyncio.sleep(0.7)  # beyond the lease ttl; the heartbeat (every 0.1 s) keeps it
    with pytest.raises(RateLimitError):
        await admission.admit(principal, "m", 1, 1)
    await long_request.settle(1, 1)
    await (await admission.admit(principal, "m", 1, 1)).settle(1, 1)


async def test_reload_swaps_tenants_keys_and_limits_live(make_admission: Any, store_kind: str) -> None:
    old_key, new_key = generate_key(), generate_key()
    admission = make_admission(store_kind, auth_enabled=True, tenants=[tenant("a", requests_per_minute=1)],
                               keys=[{"id": old_key.key_id, "hash": old_key.key_hash, "tenant": "a"}])
    principal = await admission.authenticate({"x-api-key": old_key.key})
    await admission.admit(principal, "m", 1, 1)
    with pytest.raises(RateLimitError):
        await admission.admit(principal, "m", 1, 1)
    config = admission.config.model_dump()
    config["tenants"] = [tenant("a", requests_per_minute=1000), tenant("b")]
    config["keys"] = [{"id": new_key.key_id, "hash": new_key.key_hash, "tenant": "b"}]
    admission.reload(type(admission.config).model_validate(config))
    await asyncio.sleep(0.1)  # the new rate applies at once (the bucket keeps its level: no free burst)
    await admission.admit(principal, "m", 1, 1)
    with pytest.raises(AuthenticationError):
        await admission.authenticate({"x-api-key": old_key.key})  # removed from config
    assert (await admission.authenticate({"x-api-key": new_key.key})).tenant == "b"
    with pytest.raises(ValueError, match="store"):
        admission.reload(type(admission.config).model_validate(
            config | {"store": "memory" if store_kind == "redis" else "redis"}))


async def _cancel_when_answered(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` in the loop turn after the future it waits on got its result, before the task
    resumes: the client leaving just as the store's answer came."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def check() -> None:
        waited = task._fut_waiter  # type: ignore[attr-defined]
        if waited is not None and waited.done():
            task.cancel()
            done.set_result(None)
        else:
            loop.call_soon(check)

    loop.call_soon(check)
    await asyncio.wait_for(done, 2.0)


@pytest.mark.parametrize("leaves", ["before the answer", "as the answer comes"])
async def test_a_client_leaving_while_redis_decides_gets_its_reservation_back(make_admission: Any,
                                                                              leaves: str) -> None:
    """On Redis the admission awaits the batch's reply bare (no shield): whether the cancellation
    reaches it before the reply or between the reply and the request resuming, what was admitted is
    refunded and the tenant can spend its whole budget again."""
    admission = make_admission("redis", tenants=[tenant("default", tokens_per_minute=1_000)])
    principal = Principal("default")
    await (await admission.admit(principal, "m", 1, 1)).settle(1, 1)  # connected, scripts loaded
    task = asyncio.ensure_future(admission.admit(principal, "m", 500, 400))
    if leaves == "before the answer":
        await asyncio.sleep(0)  # the admission is queued for this turn's batch
        task.cancel()
    else:
        await _cancel_when_answered(task)
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the orphaned reply arrives and its refund goes out
    usage = await admission.usage("default")
    assert usage.charged_tokens == 2 and usage.open_leases == 0
    lease = await admission.admit(principal, "m", 500, 490)  # 2 + 990 of 1,000: refused if not refunded
    await lease.settle(500, 490)
