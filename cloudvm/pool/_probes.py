"""Probes: ``boot_probe_command`` on every worker, every ``probe_interval``.

A worker is proven (IDLE) by its first probe that exits 0, which is also the
proof of its host key (the executor verifies it before any command). Later
probes watch it; ``timeout_probe`` of failing ones destroys it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import HostKeyError
from .._text import printable
from ._config import IdleBehavior, WorkerState
from ._context import PoolContext
from ._scheduling import DeadlineQueue, TokenBucket
from ._worker import WorkerRecord

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["Probes"]


def _is_current(due: float, record: WorkerRecord) -> bool:
    return (
        record.probe_due == due and not record.removed and record.state is not WorkerState.SHUTDOWN
    )


class Probes:
    """Starts each worker's probe when it is due, at most
    ``max_probes_per_second``, and acts on its outcome."""

    def __init__(self, ctx: PoolContext, fleet: Fleet) -> None:
        self._ctx = ctx
        self._fleet = fleet
        self._queue: DeadlineQueue[WorkerRecord] = DeadlineQueue(ctx.clock, ctx.waits, _is_current)

    def schedule(self, record: WorkerRecord, due: float) -> None:
        """Probe ``record`` at ``due`` (instead of when it was due)."""
        record.probe_due = due
        self._queue.push(due, record)

    async def loop(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the due probes in ``tg``, forever."""
        ctx = self._ctx
        bucket = TokenBucket(ctx.config.max_probes_per_second, ctx.clock.now())
        while True:
            now = await self._queue.wait_due()
            delay = bucket.delay(now)
            if delay > 0:
                await ctx.clock.sleep(delay)
                continue  # the queue may have changed meanwhile
            record = self._queue.pop()
            if record.probe_scope is not None:
                continue  # one probe at a time; the running one schedules the next
            bucket.take()
            record.probe_scope = anyio.CancelScope()
            tg.start_soon(self._probe, record, record.probe_scope)
            await anyio.lowlevel.checkpoint()

    async def _probe(self, record: WorkerRecord, scope: anyio.CancelScope) -> None:
        ctx = self._ctx
        config = ctx.config
        started = ctx.clock.now()
        error: BaseException | None = None
        with scope:

            async def probe() -> None:
                nonlocal error
                try:
                    executor = self._fleet.executors.of(record)
                    await executor.execute(config.boot_probe_command)
                except Exception as exc:
                    error = exc

            timed_out = await ctx.waits.within(config.timeout_probe_command, probe)
        if record.probe_scope is scope:
            record.probe_scope = None
        if scope.cancelled_caught or record.removed or record.state is WorkerState.SHUTDOWN:
            return  # the pool gave up on the worker meanwhile
        record.last_probe = ctx.clock.wall()
        if timed_out:
            error = TimeoutError(
                f"the probe took longer than timeout_probe_command "
                f"({config.timeout_probe_command} s)"
            )
        self._done(record, error)
        # probe_interval from the start of this one, so a slow probe does not
        # stretch the interval; at once if it took longer.
        self.schedule(record, max(started + config.probe_interval, ctx.clock.now()))

    def _done(self, record: WorkerRecord, error: BaseException | None) -> None:
        ctx = self._ctx
        fleet = self._fleet
        now = ctx.clock.now()
        if error is None:
            ctx.metrics.probe("ok")
            record.last_ok = now
            record.failing = False
            if record.state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
                ctx.metrics.booted(record.itype.name, now - record.created)
                record.suspect = False
                fleet.set_state(record, WorkerState.IDLE, "probe ok")
                if record.idle_behavior is IdleBehavior.DRAIN:
                    fleet.shutdown(record, "idle behaviour drain")
                return
            if record.suspect:
                record.suspect = False
                fleet.leases.refresh(record)
            fleet.timeouts.arm(record)
            return
        if isinstance(error, HostKeyError):
            ctx.metrics.probe("host_key")
            fleet.shutdown(record, f"host key not proven: {printable(str(error))}")
            return
        ctx.metrics.probe("timeout" if isinstance(error, TimeoutError) else "failed")
        ctx.logger.debug(
            "probe of %s failed: %s",
            record.id,
            printable(str(error) or type(error).__name__),
            extra={"instance_id": record.id},
        )
        if isinstance(error, ValueError) and not record.instance.address:
            ctx.request_sync()  # no address yet: a listing will tell it
        if record.state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            return  # the boot deadline decides
        if record.suspect and record.state is WorkerState.IDLE:
            fleet.shutdown(record, "probe failed after its lease broke")
            return
        record.failing = True
        fleet.timeouts.check(record)
