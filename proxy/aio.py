"""Small asyncio helpers shared by the client and upstream sides."""
from __future__ import annotations

import asyncio


def expire(waiter: asyncio.Future) -> None:
    """Timer callback: fail a pending wait with TimeoutError.

    A `loop.call_at(deadline, expire, waiter)` handle is far cheaper than an `asyncio.timeout()`
    context, and these waits happen on every request.
    """
    if not waiter.done():
        waiter.set_exception(TimeoutError())
