"""The sim's fault grammar, process fault state and token-level fault application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from backends.sim.faults import (
    DropConnection,
    FaultSpec,
    FaultSyntaxError,
    InjectedStreamError,
    ProcessFaults,
    apply_faults,
    parse_fault,
    spec_from_json,
)


def test_grammar() -> None:
    spec = parse_fault("status=503; drop-after=5;stall-before=0.5;stall-after=3:2;slow=0.01;error_after=7")
    assert spec == FaultSpec(status=503, drop_after=5, stall_before=0.5, stall_after=(3, 2.0), slow=0.01,
                             error_after=7)
    assert parse_fault("") == FaultSpec() and FaultSpec().empty
    for bad in ("status=200", "drop-after=-1", "nope=1", "stall-after=3", "slow=x", "status"):
        with pytest.raises(FaultSyntaxError):
            parse_fault(bad)


def test_json_body_and_header_override() -> None:
    assert spec_from_json({"status": 500, "stall_after": [2, 0.5], "count": 2}) == \
        FaultSpec(status=500, stall_after=(2, 0.5))
    assert spec_from_json({"fault": "drop-after=1", "unhealthy": True}) == FaultSpec(drop_after=1)
    faults = ProcessFaults(FaultSpec(status=503), count=2)
    assert faults.for_request("slow=0.5") == FaultSpec(status=503, slow=0.5)
    assert faults.for_request("status=429").status == 429
    assert faults.for_request(None) == FaultSpec()  # the count is used up
    assert ProcessFaults(FaultSpec(drop_after=3)).for_request(None).drop_after == 3


async def batches(*items: tuple[list[str], bool]) -> AsyncIterator[tuple[list[str], bool]]:
    for item in items:
        yield item


async def collect(spec: FaultSpec, *items: tuple[list[str], bool]) -> list[tuple[list[str], bool]]:
    return [item async for item in apply_faults(spec, batches(*items))]


async def test_per_token_faults_split_batches_and_keep_the_finish_flag() -> None:
    out = await collect(FaultSpec(slow=0.0001), (["a", "b"], False), (["c"], True))
    assert out == [(["a"], False), (["b"], False), (["c"], True)]
    assert await collect(FaultSpec(), (["a", "b"], True)) == [(["a", "b"], True)]


async def test_drop_and_error_after_n_tokens() -> None:
    seen: list[str] = []
    with pytest.raises(DropConnection):
        async for tokens, _done in apply_faults(FaultSpec(drop_after=2), batches((["a", "b", "c"], False))):
            seen += tokens
    assert seen == ["a", "b"]
    with pytest.raises(InjectedStreamError):
        await collect(FaultSpec(error_after=1), (["a"], False), ([], True))
    # Finishing at exactly N tokens with the tokens' own finish flag is not a drop.
    assert await collect(FaultSpec(drop_after=2), (["a", "b"], True)) == [(["a"], False), (["b"], True)]


async def test_stalls_take_time() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await collect(FaultSpec(stall_before=0.05, stall_after=(1, 0.05)), (["a", "b"], True))
    assert loop.time() - start >= 0.09
