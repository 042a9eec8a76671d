"""The fake cloud's time seam: a real clock, and a manual one for tests."""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

from ..pool._clock import SystemPoolClock

__all__ = ["FakeClock", "ManualClock", "SystemClock"]


@runtime_checkable
class FakeClock(Protocol):
    """Where the fake cloud reads time and sleeps.

    ``now`` is monotonic seconds (any origin); ``wall`` is the matching UTC
    time, used for ``RateLimitError.earliest_retry``; ``sleep`` waits until
    ``now`` has advanced by ``seconds`` (0 or less: only a checkpoint).
    """

    def now(self) -> float: ...

    def wall(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


#: Real time: the event loop's clock (``anyio.current_time``), the system's
#: UTC time and ``anyio.sleep``; the fake cloud's default. It is
#: :class:`cloudvm.pool.SystemPoolClock` itself, so that a pool and a fake
#: cloud on real time share one clock (and the pool's real-time waits).
SystemClock = SystemPoolClock


class ManualClock:
    """Time that moves only when a test calls :meth:`advance`.

    ``now`` starts at ``start`` and ``wall`` at ``wall_start`` (UTC). A task
    in :meth:`sleep` wakes when ``advance`` moves ``now`` to or past its
    deadline, so tests of token buckets and delays never really sleep.
    """

    def __init__(
        self,
        start: float = 0.0,
        wall_start: datetime = datetime(2030, 1, 1, tzinfo=UTC),
    ) -> None:
        if wall_start.tzinfo is None:
            raise ValueError("wall_start must be timezone-aware")
        self._start = start
        self._now = start
        self._wall_start = wall_start
        self._order = itertools.count()  # breaks ties between equal deadlines
        self._sleepers: list[tuple[float, int, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._now - self._start)

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock right now."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose
        deadline has come (they run at their next scheduling)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + seconds, next(self._order), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():  # cancelled: forget the sleeper
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
