"""What every part of one pool shares."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Mapping

import anyio
import anyio.abc

from .._protocols import InstanceSet
from .._types import InstanceType
from ._clock import PoolClock, Waits
from ._config import PoolConfig
from ._events import EventHub
from ._metrics import PoolMetrics

__all__ = ["CALL_LIMIT", "PoolContext"]

#: Seconds (real time) a cloud call (create, destroy, listing, tags) may take
#: before it is given up; it is a bound for the critical sections, not a schedule.
CALL_LIMIT = 900.0


@dataclasses.dataclass(eq=False, kw_only=True)
class PoolContext:
    """The settings, time, logger, metrics, events and set of one pool, and the
    few signals its parts give each other."""

    config: PoolConfig
    #: The config's instance types by name.
    types: Mapping[str, InstanceType]
    #: The set the pool works through (the resilient wrapper).
    instance_set: InstanceSet
    clock: PoolClock
    waits: Waits
    logger: logging.Logger
    metrics: PoolMetrics
    hub: EventHub
    #: The pool's task group while it runs; None before and after.
    tg: anyio.abc.TaskGroup | None = None
    #: Set to ask the sync loop for a listing soon; the loop replaces it.
    sync_wanted: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    _seq: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def next_seq(self) -> int:
        """The next number of the one sequence that orders worker adds,
        listings, failed creates and drains: a listing settles only what
        came before it started."""
        return next(self._seq)

    def request_sync(self) -> None:
        """Ask for a listing soon (listings start ``MIN_SYNC_GAP`` apart)."""
        self.sync_wanted.set()

    def check_running(self) -> anyio.abc.TaskGroup:
        """The pool's task group.

        Raises:
            RuntimeError: the pool is not running.
        """
        if self.tg is None:
            raise RuntimeError("the WorkerPool is not running; use it inside 'async with'")
        return self.tg
