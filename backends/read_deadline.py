"""The deadline of one stream's reads from its engine (``engine_http.open_event_stream``): the first
event's deadline, then the idle deadline after each event, kept by a single timer per stream."""

from __future__ import annotations

import asyncio
from typing import Any


class ReadDeadline:
    """The deadline of a stream's reads with one timer per stream, not one ``asyncio.timeout`` per read
    (about 4 µs each, and an answer takes a dozen reads). The timer is armed at the deadline; firing
    while no read waits, or before a deadline that has moved on since, it only arms again; firing past
    the deadline during a read, it cancels the reading task, which ``expired`` then tells apart from
    any other cancellation the way ``asyncio.timeout`` does."""

    __slots__ = ("_armed_at", "_fired", "_handle", "_loop", "_task", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.deadline = 0.0
        self._armed_at = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._fired = False

    def begin_read(self) -> int:
        """Call right before awaiting a read; returns what ``expired`` needs."""
        task = asyncio.current_task(self._loop)  # given the loop: no get_running_loop (getpid on 3.11)
        assert task is not None
        if self._handle is None or self._armed_at > self.deadline:
            self._arm()
        self._task = task
        return task.cancelling()

    def end_read(self) -> None:
        if self._fired and self._task is not None:
            self._fired = False
            self._task.uncancel()  # the read ended some other way: take back our cancel request
        self._task = None

    def expired(self, cancelling: int) -> bool:
        """Whether the ``CancelledError`` a read raised is this deadline's (and only its) doing."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() <= cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = self.deadline
        self._handle = self._loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._task is None:
            return  # nobody is reading: the next read arms the timer again
        if self._loop.time() < self.deadline:
            self._arm()
            return
        self._fired = True
        self._task.cancel()
