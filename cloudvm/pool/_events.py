"""Pool events and their subscribers, each with a bounded buffer."""

from __future__ import annotations

import collections
import dataclasses
import enum
import weakref
from collections.abc import AsyncIterator
from datetime import datetime

import anyio

from .._types import InstanceID
from ._config import IdleBehavior, WorkerState

__all__ = ["DEFAULT_MAX_BUFFERED", "EventHub", "PoolEvent", "PoolEventKind", "Subscription"]

#: Events one subscriber may have waiting before newer ones are dropped.
DEFAULT_MAX_BUFFERED = 10_000


class PoolEventKind(enum.Enum):
    """What a :class:`PoolEvent` reports."""

    #: A worker entered ``state`` (``previous`` is None for a new worker).
    STATE = "state"
    #: A worker's idle behaviour became ``idle_behavior``.
    IDLE_BEHAVIOR = "idle_behavior"
    #: A worker left the pool: listings no longer show its instance.
    GONE = "gone"
    #: Creates are held (``hold`` is "quota", "capacity" or "rate_limit") until
    #: ``until`` at the latest.
    HOLD = "hold"
    #: A hold ended early (a destroy ended "quota").
    HOLD_ENDED = "hold_ended"
    #: This subscriber's buffer was full: ``dropped`` events are missing here.
    DROPPED = "dropped"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolEvent:
    """One thing that happened in a pool, as :meth:`WorkerPool.events` reports it.

    ``time`` is the pool clock's UTC time. Fields that do not apply to the
    ``kind`` are None (or 0 / ""). ``reason`` says why in a few words
    ("created", "adopted", "probe ok", "boot timeout", "idle timeout", ...).
    """

    kind: PoolEventKind
    time: datetime
    instance_id: InstanceID | None = None
    instance_type: str | None = None
    state: WorkerState | None = None
    previous: WorkerState | None = None
    idle_behavior: IdleBehavior | None = None
    reason: str = ""
    hold: str | None = None
    until: datetime | None = None
    dropped: int = 0


class Subscription:
    """An async iterator over a pool's events from the moment it was made.

    Drop policy: at most ``max_buffered`` events wait for the reader; while the
    buffer is full, new events are dropped (the pool never waits for a
    reader), and the reader later finds one ``DROPPED`` event, carrying the
    count, exactly where they are missing. Iteration ends when the pool
    stops or :meth:`aclose` is called.
    """

    def __init__(self, hub: EventHub, max_buffered: int) -> None:
        self._hub = hub
        self._max = max_buffered
        self._buffer: collections.deque[PoolEvent] = collections.deque()
        self._dropped = 0
        self._dropped_at: datetime | None = None
        self._closed = False
        self._ready: anyio.Event | None = None

    def _push(self, event: PoolEvent) -> None:
        if len(self._buffer) >= self._max:
            if not self._dropped:
                self._dropped_at = event.time
            self._dropped += 1
            return
        if self._dropped:
            self._flush_drops()
        self._buffer.append(event)
        self._wake()

    def _flush_drops(self) -> None:
        assert self._dropped_at is not None
        self._buffer.append(
            PoolEvent(kind=PoolEventKind.DROPPED, time=self._dropped_at, dropped=self._dropped)
        )
        self._dropped = 0

    def _wake(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.set()

    def _end(self) -> None:
        self._closed = True
        self._wake()

    def __aiter__(self) -> AsyncIterator[PoolEvent]:
        return self

    async def __anext__(self) -> PoolEvent:
        """The next event; waits for one. Raises StopAsyncIteration at the end."""
        while not self._buffer:
            if self._dropped:
                self._flush_drops()
                break
            if self._closed:
                raise StopAsyncIteration
            if self._ready is None:
                self._ready = anyio.Event()
            await self._ready.wait()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop receiving events; buffered ones are discarded."""
        self._hub.unsubscribe(self)
        self._buffer.clear()
        self._dropped = 0
        self._end()


class EventHub:
    """Fans each event out to every live subscription, synchronously."""

    def __init__(self) -> None:
        # Weak: a reader that walks away without aclose() costs nothing for long.
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    def subscribe(self, max_buffered: int) -> Subscription:
        sub = Subscription(self, max_buffered)
        if self._closed:
            sub._end()
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: PoolEvent) -> None:
        for sub in list(self._subscribers):
            sub._push(event)

    def close(self) -> None:
        self._closed = True
        for sub in list(self._subscribers):
            sub._end()
        self._subscribers.clear()
