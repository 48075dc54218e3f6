"""proxy.aio.Deadline: one timer per connection, re-armed only when a wait's deadline moved later,
driven by a hand-moved clock (no sleeping, nothing depends on speed)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.aio import Deadline


class Clock:
    """The two things Deadline asks of its loop: the time and a timer, fired by `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Any] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, to: float) -> None:
        self.now = to
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer.when <= to and not timer.cancelled:
                self.timers.remove(timer)
                timer.callback()

    def armed(self) -> list[float]:
        return [t.when for t in self.timers if not t.cancelled]


class Timer:
    def __init__(self, when: float, callback: Any) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def timed_out(waiter: asyncio.Future) -> bool:
    return waiter.done() and isinstance(waiter.exception(), TimeoutError)


def test_a_wait_fails_at_its_deadline_not_before(loop):
    clock = Clock()
    deadline = Deadline(clock)  # type: ignore[arg-type]
    waiter = loop.create_future()
    deadline.start(waiter, 10.0)
    clock.advance(9.9)
    assert not waiter.done()
    clock.advance(10.0)
    assert timed_out(waiter)


def test_a_later_deadline_keeps_the_armed_timer_which_re_arms_when_it_fires_early(loop):
    clock = Clock()
    deadline = Deadline(clock)  # type: ignore[arg-type]
    first = loop.create_future()
    deadline.start(first, 10.0)
    deadline.stop()  # the first wait ended in time
    second = loop.create_future()
    clock.now = 5.0
    deadline.start(second, 15.0)
    assert clock.armed() == [10.0]  # no new timer for a later deadline
    clock.advance(10.0)
    assert not first.done() and not second.done()
    assert clock.armed() == [15.0]
    clock.advance(15.0)
    assert timed_out(second)


def test_an_earlier_deadline_re_arms_the_timer_earlier(loop):
    clock = Clock()
    deadline = Deadline(clock)  # type: ignore[arg-type]
    deadline.start(loop.create_future(), 75.0)
    deadline.stop()
    waiter = loop.create_future()
    deadline.start(waiter, 10.0)
    assert clock.armed() == [10.0]
    clock.advance(10.0)
    assert timed_out(waiter)


def test_a_stopped_wait_is_not_failed_and_close_drops_the_timer(loop):
    clock = Clock()
    deadline = Deadline(clock)  # type: ignore[arg-type]
    waiter = loop.create_future()
    deadline.start(waiter, 10.0)
    deadline.stop()
    clock.advance(20.0)
    assert not waiter.done() and clock.armed() == []
    deadline.start(waiter, 30.0)
    deadline.close()
    assert clock.armed() == []
    clock.advance(40.0)
    assert not waiter.done()


def test_a_timer_that_fires_for_the_current_deadline_expires_the_wait_whatever_the_clock_reads(loop):
    """uvloop's clock counts milliseconds and runs a timer due in under half of one at once: the
    wait expires when its timer fires (as a timer handle per wait did), rather than re-arming
    over and over until the clock catches up."""
    clock = Clock()
    deadline = Deadline(clock)  # type: ignore[arg-type]
    waiter = loop.create_future()
    deadline.start(waiter, 10.0)
    clock.now = 9.9996
    clock.timers.pop().callback()
    assert timed_out(waiter) and clock.armed() == []
