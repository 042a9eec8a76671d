"""The pool's time: the clock it reads and sleeps on, and waits bounded by it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["PoolClock", "SystemPoolClock", "Waits", "seconds_until"]


@runtime_checkable
class PoolClock(Protocol):
    """Where a pool reads time and sleeps: the seam tests fill with a
    :class:`cloudvm.testing.ManualClock`.

    ``now`` is monotonic seconds (any origin), ``wall`` the matching UTC time
    (aware), ``sleep`` waits until ``now`` has advanced by ``seconds``.
    """

    def now(self) -> float: ...

    def wall(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemPoolClock:
    """Real time: the event loop's clock, the system's UTC time, ``anyio.sleep``."""

    def now(self) -> float:
        return anyio.current_time()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))


def seconds_until(clock: PoolClock, when: datetime, *, at_least: float) -> float:
    """Seconds from the clock's wall time to ``when``, but at least ``at_least``:
    a provider's retry time may be past already, or skewed against ours."""
    return max((when - clock.wall()).total_seconds(), at_least)


class Waits:
    """Waits bounded by seconds on a pool clock.

    Any clock can only be waited on by a helper task that sleeps on it; on
    real time the event loop's own timers do it without one, which is a third
    of the CPU a probe costs.
    """

    def __init__(self, clock: PoolClock) -> None:
        self._clock = clock
        self._real_time = type(clock) is SystemPoolClock

    async def for_event(self, event: anyio.Event, seconds: float | None) -> None:
        """Return when ``event`` is set or ``seconds`` pass (None: no limit)."""
        if event.is_set():
            return
        if seconds is None:
            await event.wait()
            return
        if seconds <= 0:
            await self._clock.sleep(0)  # still a checkpoint: a loop calling this yields
            return
        await self.within(seconds, event.wait)

    async def within(self, seconds: float, operation: Callable[[], Awaitable[object]]) -> bool:
        """Await ``operation()``, cancelling it after ``seconds``. Returns True
        if it was cut short."""
        if self._real_time:
            with anyio.move_on_after(seconds) as limit:
                await operation()
            return limit.cancelled_caught
        timed_out = False
        async with anyio.create_task_group() as tg:

            async def alarm() -> None:
                nonlocal timed_out
                await self._clock.sleep(seconds)
                timed_out = True
                tg.cancel_scope.cancel()

            tg.start_soon(alarm)
            try:
                await operation()
            finally:
                tg.cancel_scope.cancel()
        return timed_out
