"""Asyncio on a known event loop, for the per-request path: the running loop found once, task creation
and deadlines that take the loop instead of looking it up.

Why: on Python 3.11 every ``asyncio.get_running_loop()`` is a ``getpid()`` system call (a fork check that
3.12 dropped), and ``asyncio.ensure_future(coroutine)`` makes one, ``asyncio.timeout`` two. A py-spy
profile of the full pipeline (concurrency 16, non-stream) put ``getpid`` at 5% of the gateway's CPU.

This module imports nothing from the project, so engine adapters in ``backends/`` may use it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class LoopRef:
    """The loop its owner's coroutines run on. Found with ``get_running_loop`` the first time, then
    trusted while it has a task running (``asyncio.current_task(loop)`` is a dict lookup): an owner
    carried over to another loop (a test's next event loop) finds the new one again."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop; call it from a task (from a plain callback it works, but looks it up)."""
        loop = self._loop
        if loop is None or asyncio.current_task(loop) is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def create_task(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``asyncio.ensure_future(coroutine)`` without its ``getpid``."""
        return self.get().create_task(coroutine)


class Deadline:
    """``asyncio.timeout_at(when)`` for the current task of a given loop (``when`` None: no deadline).
    At ``when`` the task is cancelled, and that cancellation (and only it) leaves the block as
    ``TimeoutError``; a cancellation from anyone else passes through, as with ``asyncio.timeout``."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float | None) -> None:
        self._loop = loop
        self._when = when
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        if self._when is None:
            return self  # nothing to arm: no task to find (a non-stream request's inner call)
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be entered inside a task of its loop")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self._when, self._expire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired:
            assert self._task is not None
            # No cancel request beside ours: the CancelledError is ours to turn into a timeout.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
        return None

    @property
    def expired(self) -> bool:
        return self._expired

    def _expire(self) -> None:
        self._handle = None
        assert self._task is not None
        self._task.cancel()
        self._expired = True


def deadline_in(loop: asyncio.AbstractEventLoop, delay_s: float | None) -> Deadline:
    """``asyncio.timeout(delay_s)`` on ``loop``."""
    return Deadline(loop, None if delay_s is None else loop.time() + delay_s)
