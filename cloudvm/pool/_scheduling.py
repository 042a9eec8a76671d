"""When the pool's loops act next: a queue of deadlines and a token bucket."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

from ._clock import PoolClock, Waits

__all__ = ["DeadlineQueue", "TokenBucket"]

_T = TypeVar("_T")


class DeadlineQueue(Generic[_T]):
    """Items by the time they are due (pool clock), for one loop that acts on
    each in turn.

    A rescheduled item is pushed again and its old entry stays behind: with
    thousands of workers rescheduled every probe, a heap push is cheap and a
    removal is not. ``is_current(due, item)`` tells the live entry from the
    stale ones, which are dropped when they reach the front.
    """

    def __init__(
        self, clock: PoolClock, waits: Waits, is_current: Callable[[float, _T], bool]
    ) -> None:
        self._clock = clock
        self._waits = waits
        self._is_current = is_current
        self._heap: list[tuple[float, int, _T]] = []
        self._order = itertools.count()  # equal times: first pushed, first due
        self._wake = anyio.Event()

    def push(self, due: float, item: _T) -> None:
        """Queue ``item`` for ``due``."""
        heapq.heappush(self._heap, (due, next(self._order), item))
        if self._heap[0][2] is item:
            self._wake.set()  # it is first now: the loop's wait must end sooner

    async def wait_due(self) -> float:
        """Return once the first live entry is due; returns the clock's now."""
        heap = self._heap
        while True:
            self._wake = anyio.Event()
            while heap and not self._is_current(heap[0][0], heap[0][2]):
                heapq.heappop(heap)
            if not heap:
                await self._waits.for_event(self._wake, None)
                continue
            now = self._clock.now()
            due = heap[0][0]
            if due <= now:
                return now
            await self._waits.for_event(self._wake, due - now)

    def pop(self) -> _T:
        """Take the first entry (after :meth:`wait_due`, the due one)."""
        return heapq.heappop(self._heap)[2]


class TokenBucket:
    """``rate`` tokens per second, up to one second's worth, on the pool clock."""

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        # Never less than one token, or a rate under 1/s could never take one.
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._stamp = now

    def delay(self, now: float) -> float:
        """Seconds until a token is there (0: take one now)."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def take(self) -> None:
        """Spend a token."""
        self._tokens -= 1.0
