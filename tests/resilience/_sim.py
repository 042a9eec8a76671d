"""Simulated time shared by the fake cloud and the resilient wrapper.

The fake cloud reads time from a :class:`~cloudvm.testing.ManualClock`; the
wrapper takes a ``clock`` returning an aware UTC datetime and a ``sleep``.
:class:`SimClock` adapts one ManualClock to both seams and remembers when each
sleeper is due, so :func:`run_until` can jump straight to the next due time
once every task is blocked: a run covering minutes of cloud time takes
milliseconds and is deterministic.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel

import cloudvm
from cloudvm import ImageID, InitCommand, Instance, InstanceSet, InstanceSetID, InstanceType
from cloudvm.testing import CallRecord, FakeCloud, ManualClock

__all__ = [
    "IMAGE",
    "LARGE",
    "MEDIUM",
    "NO_INIT",
    "SET",
    "SMALL",
    "DecisionLog",
    "SimClock",
    "calls_of",
    "create",
    "run_until",
    "settle",
    "sim_cloud",
    "wrap",
]


def _itype(name: str, provider_type: str, vcpus: int) -> InstanceType:
    return InstanceType(
        name=name,
        provider_type=provider_type,
        vcpus=vcpus,
        ram=vcpus << 30,
        scratch=0,
        included_scratch=0,
        added_scratch=0,
        price=0.01 * vcpus,
    )


SMALL = _itype("small", "t3.small", 2)
MEDIUM = _itype("medium", "t3.medium", 2)
LARGE = _itype("large", "m5.xlarge", 4)
IMAGE = ImageID("ami-sim")
SET = InstanceSetID("set-a")
_CHECKPOINTS = 20  # enough for a woken waiter to reach its next wait
NO_INIT = InitCommand("")


class SimClock:
    """A ManualClock seen through both seams.

    ``now`` / ``wall`` / ``sleep`` make it a ``FakeClock`` for the cloud;
    ``wall`` and ``sleep`` are the wrapper's ``clock`` and ``sleep``. Every
    sleep is also noted here (the ManualClock does not say when its sleepers
    are due), so :meth:`next_due` knows where to jump.
    """

    def __init__(self) -> None:
        self.manual = ManualClock()
        self._start = self.manual.now()
        self._wall_start = self.manual.wall()
        self._due: list[float] = []

    def now(self) -> float:
        return self.manual.now()

    def wall(self) -> datetime:
        return self.manual.wall()

    def wall_at(self, now: float) -> datetime:
        """The UTC time of a reading of :meth:`now` (as the call log holds)."""
        # The ManualClock's own formula, so that both round alike.
        return self._wall_start + timedelta(seconds=now - self._start)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await self.manual.sleep(seconds)
            return
        due = self.manual.now() + seconds  # computed exactly as ManualClock does
        self._due.append(due)
        try:
            await self.manual.sleep(seconds)
        finally:
            self._due.remove(due)

    @property
    def sleepers(self) -> int:
        return len(self._due)

    def next_due(self) -> float | None:
        return min(self._due, default=None)

    def advance(self, seconds: float) -> None:
        self.manual.advance(seconds)

    def advance_to(self, due: float) -> None:
        """Move to ``due`` exactly (never short of it by a rounding error)."""
        step = max(due - self.manual.now(), 0.0)
        while self.manual.now() + step < due:
            step = math.nextafter(step, math.inf)
        self.manual.advance(step)


async def settle() -> None:
    """Return once every other task is blocked.

    ``anyio.wait_all_tasks_blocked`` alone polls every 0.1 s of real time while
    some task can still run; a few plain checkpoints first usually let every
    woken task reach its next wait, so the poll then returns at once.
    """
    for _ in range(_CHECKPOINTS):
        await anyio.lowlevel.checkpoint()
    await anyio.wait_all_tasks_blocked()


async def run_until(clock: SimClock, done: Callable[[], bool], *, limit: float = 3600.0) -> None:
    """Let every task run until all are blocked, then jump to the next due
    sleeper; repeat until ``done()``. Fails if everyone is blocked with no
    sleeper (a deadlock) or simulated time passes ``limit`` seconds."""
    start = clock.now()
    while True:
        await settle()
        if done():
            return
        due = clock.next_due()
        assert due is not None, "every task is blocked and none is sleeping: deadlock"
        assert due - start <= limit, f"still not done after {limit} simulated seconds"
        clock.advance_to(due)


class DecisionLog(logging.Handler):
    """Collects the wrapper's decision records (one per decision taken), each
    stamped with the simulated time it was taken at (``sim_time``)."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__(logging.DEBUG)
        self._clock = clock
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(f"tests.resilience.{id(self)}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        record.sim_time = self._clock.now()
        self.records.append(record)

    def decisions(self, *names: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "decision", None) in names]

    def hold_offs(self, kind: str | None = None) -> list[tuple[float, datetime]]:
        """(simulated time, end as UTC) of every hold-off started or extended."""
        return [
            (float(r.__dict__["sim_time"]), datetime.fromisoformat(r.__dict__["until"]))
            for r in self.decisions("hold_off_started", "hold_off_extended")
            if kind is None or r.__dict__["kind"] == kind
        ]


def sim_cloud(clock: SimClock, **config: Any) -> FakeCloud:
    """A fake cloud on ``clock``; no throttling unless the config says so."""
    config.setdefault("rate_limits", None)
    return FakeCloud(config, clock=clock)


def wrap(
    instance_set: InstanceSet,
    clock: SimClock,
    log: DecisionLog | None = None,
    *,
    seed: int = 7,
    **policy: Any,
) -> InstanceSet:
    """``cloudvm.resilient`` on the simulated clock, with seeded jitter."""
    return cloudvm.resilient(
        instance_set,
        logger=log.logger if log is not None else None,
        clock=clock.wall,
        sleep=clock.sleep,
        rng=random.Random(seed).random,
        **policy,
    )


async def create(instance_set: InstanceSet, itype: InstanceType = SMALL) -> Instance:
    return await instance_set.create(itype, IMAGE, {"role": "sim"}, NO_INIT, None)


def calls_of(cloud: FakeCloud, operation: str) -> list[CallRecord]:
    return [call for call in cloud.calls if call.operation == operation]
