"""gateway.loop_bound: the loop held once and checked cheaply, and a deadline that behaves like
``asyncio.timeout`` (its timeout becomes ``TimeoutError``, anyone else's cancellation passes through)."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from gateway.loop_bound import Deadline, LoopRef, deadline_in


async def test_deadline_turns_its_own_cancellation_into_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline_in(loop, 0.05) as deadline:
            await asyncio.sleep(5)
    assert deadline.expired
    assert 0.04 <= loop.time() - started < 1.0
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # the cancel request was taken back


async def test_deadline_not_reached_changes_nothing() -> None:
    loop = asyncio.get_running_loop()
    async with deadline_in(loop, 5) as deadline:
        await asyncio.sleep(0.01)
    assert not deadline.expired
    await asyncio.sleep(0.01)  # no late cancellation from a timer left behind


async def test_no_deadline_never_expires() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, None) as deadline:
        await asyncio.sleep(0.01)
    assert not deadline.expired


async def test_someone_elses_cancellation_passes_through() -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def guarded() -> None:
        async with deadline_in(loop, 5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_from_outside_as_the_deadline_fires_stays_cancelled() -> None:
    """Both cancel at once: the outer request must win, as with ``asyncio.timeout``."""
    loop = asyncio.get_running_loop()

    async def guarded() -> None:
        async with Deadline(loop, loop.time()):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)  # entered, timer armed for now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_error_from_inside_is_not_mistaken_for_expiry() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError, match="inner"):
        async with deadline_in(loop, 5) as deadline:
            raise TimeoutError("inner")
    assert not deadline.expired


async def test_outside_a_task_it_refuses() -> None:
    loop = asyncio.get_running_loop()
    outcome: list[BaseException] = []

    def from_callback() -> None:
        coroutine = Deadline(loop, loop.time() + 5).__aenter__()
        try:
            coroutine.send(None)
        except BaseException as exc:
            outcome.append(exc)

    loop.call_soon(from_callback)
    await asyncio.sleep(0.01)
    assert isinstance(outcome[0], RuntimeError)


async def test_loop_ref_looks_the_loop_up_once() -> None:
    ref = LoopRef()
    assert ref.get() is asyncio.get_running_loop()
    with mock.patch("asyncio.get_running_loop", side_effect=AssertionError("looked up again")):
        assert ref.get() is not None
        task = ref.create_task(asyncio.sleep(0, result=7))
    assert await task == 7


def test_loop_ref_finds_a_new_loop_after_the_old_one_closed() -> None:
    ref = LoopRef()

    async def which() -> asyncio.AbstractEventLoop:
        return ref.get()

    first = asyncio.run(which())
    second_loop = asyncio.new_event_loop()
    try:
        second = second_loop.run_until_complete(which())
    finally:
        second_loop.close()
    assert second is second_loop and second is not first


def test_bound_loop_and_deadline_make_no_lookup() -> None:
    """What the module is for: on 3.11 each ``get_running_loop`` is a ``getpid`` system call."""
    ref = LoopRef()

    async def run() -> int:
        ref.get()
        entered = 0
        with mock.patch("asyncio.get_running_loop", side_effect=AssertionError("looked up")):
            for _ in range(100):
                async with Deadline(ref.get(), None), deadline_in(ref.get(), 5):
                    entered += 1
        return entered

    assert asyncio.run(run()) == 100
