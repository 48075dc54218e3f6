"""Small asyncio helpers shared by the client and upstream sides."""
from __future__ import annotations

import asyncio


def expire(waiter: asyncio.Future) -> None:
    """Timer callback: fail a pending wait with TimeoutError.

    A `loop.call_at(deadline, expire, waiter)` handle is far cheaper than an `asyncio.timeout()`
    context; for the waits of every request, `Deadline` is cheaper still.
    """
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Deadline:
    """The deadline of one connection's waits, one wait at a time, on a timer that outlives them.

    A timer handle per wait costs a handle, a libuv timer started and stopped and a close
    callback, and a keep-alive connection waits at least twice per request (for the next head,
    for the upstream's answer) with deadlines that move later each time. So one timer stays
    armed at the earliest deadline set: a later deadline only records itself, and when the
    timer fires before the current deadline it re-arms for that one instead of failing the wait.
    """

    __slots__ = ("_loop", "_waiter", "_when", "_timer", "_timer_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future | None = None
        self._when = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def start(self, waiter: asyncio.Future, when: float) -> None:
        """Fail `waiter` with TimeoutError at loop time `when` unless `stop()` comes first."""
        self._waiter, self._when = waiter, when
        if self._timer is None or self._timer_when > when:
            if self._timer is not None:
                self._timer.cancel()
            self._arm(when)

    def stop(self) -> None:
        self._waiter = None

    def close(self) -> None:
        """No more waits (the connection is gone): the timer goes, and with it its reference."""
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._fire)
        self._timer_when = when

    def _fire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        # Compared with the time the timer was armed for, not with the clock: a loop's clock
        # (uvloop's counts milliseconds) may read a little short of a deadline its timer met.
        if self._when <= self._timer_when:
            self._waiter = None
            waiter.set_exception(TimeoutError())
        else:
            self._arm(self._when)
