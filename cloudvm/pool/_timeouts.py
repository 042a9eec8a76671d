"""Timeouts: each worker's next deadline, acted on at its moment.

Which deadline counts depends on the state: a BOOTING or UNKNOWN worker has
its boot deadline (``timeout_booting``); an IDLE or RUNNING one whose probes
fail has ``timeout_probe`` from its last good probe, and a leasable IDLE one
``timeout_idle`` from when it became leasable; a SHUTDOWN one the retry of
its destroy (``timeout_shutdown``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.lowlevel

from ._config import WorkerState
from ._context import PoolContext
from ._scheduling import DeadlineQueue
from ._worker import WorkerRecord

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["Timeouts"]


def _is_current(due: float, record: WorkerRecord) -> bool:
    return record.deadline == due and not record.removed


class Timeouts:
    """Every worker's next deadline, in one queue that one loop acts on."""

    def __init__(self, ctx: PoolContext, fleet: Fleet) -> None:
        self._ctx = ctx
        self._fleet = fleet
        self._queue: DeadlineQueue[WorkerRecord] = DeadlineQueue(ctx.clock, ctx.waits, _is_current)

    def arm(self, record: WorkerRecord) -> None:
        """(Re)compute the worker's next deadline and queue it if it moved."""
        deadline = None if record.removed else self._next_deadline(record)
        if deadline == record.deadline:
            return
        record.deadline = deadline
        if deadline is not None:
            self._queue.push(deadline, record)

    def _next_deadline(self, record: WorkerRecord) -> float | None:
        config = self._ctx.config
        state = record.state
        if state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            return record.boot_deadline
        if state is WorkerState.SHUTDOWN:
            return None if record.destroying else record.next_destroy_at
        times = []
        if record.failing:
            times.append(record.last_ok + config.timeout_probe)
        if record.leasable():
            times.append(record.idle_since + config.timeout_idle)
        return min(times, default=None)

    def check(self, record: WorkerRecord) -> None:
        """Act on whatever timeout has come for ``record``, then re-arm it."""
        if record.removed:
            return
        config = self._ctx.config
        fleet = self._fleet
        now = self._ctx.clock.now()
        state = record.state
        if state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            if now >= record.boot_deadline:
                fleet.shutdown(
                    record, f"not ready within timeout_booting ({config.timeout_booting} s)"
                )
                return
        elif state is WorkerState.SHUTDOWN:
            if not record.destroying and now >= record.next_destroy_at:
                fleet.start_destroy(record)
        else:
            if record.failing and now >= record.last_ok + config.timeout_probe:
                fleet.shutdown(
                    record, f"probes failing for timeout_probe ({config.timeout_probe} s)"
                )
                return
            if (
                record.leasable()
                and now >= record.idle_since + config.timeout_idle
                # Leases wait for this type: the worker is wanted, however long it idled.
                and not fleet.leases.has_waiters(record.itype.name)
            ):
                fleet.shutdown(record, f"idle for timeout_idle ({config.timeout_idle} s)")
                return
        record.deadline = None
        self.arm(record)

    async def loop(self) -> None:
        """Act on each deadline when it comes, forever."""
        while True:
            await self._queue.wait_due()
            record = self._queue.pop()
            record.deadline = None
            self.check(record)
            await anyio.lowlevel.checkpoint()
