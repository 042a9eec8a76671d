"""The fleet: every worker the pool holds and the moves of its state machine.

A move is recorded (metrics, an event, a log line) and sets going what it
means for the other parts: a new worker is probed or destroyed, a changed one
may become leasable or stop being so, and its next deadline may move. The
fleet also makes the destroy calls, retried every ``timeout_shutdown`` until
a listing no longer shows the instance.
"""

from __future__ import annotations

import logging

import anyio

from .._critical import run_critical
from .._protocols import Instance
from .._text import printable
from .._types import InstanceID, InstanceTags, InstanceType
from ._config import IDLE_BEHAVIOR_TAG, IdleBehavior, WorkerState
from ._context import CALL_LIMIT, PoolContext
from ._events import PoolEvent, PoolEventKind
from ._executors import Executors
from ._holds import CreateHolds
from ._leases import Leases
from ._probes import Probes
from ._timeouts import Timeouts
from ._worker import WorkerRecord

__all__ = ["Fleet"]


class Fleet:
    """Every worker the pool holds, by instance id, and its state machine.

    The fleet makes the parts a move sets going (``leases``, ``probes``,
    ``timeouts``), so that each is there before the first move.
    """

    def __init__(self, ctx: PoolContext, holds: CreateHolds, executors: Executors) -> None:
        self._ctx = ctx
        self._holds = holds
        self.executors = executors
        self.workers: dict[InstanceID, WorkerRecord] = {}
        #: drain() calls under way: creates are refused, new instances destroyed.
        self.draining = 0
        self.leases = Leases(ctx, self)
        self.probes = Probes(ctx, self)
        self.timeouts = Timeouts(ctx, self)

    # ------------------------------------------------------------------ moves

    def add(
        self,
        instance: Instance,
        itype: InstanceType,
        state: WorkerState,
        behavior: IdleBehavior,
        tags: InstanceTags,
        *,
        boot_deadline: float,
        reason: str,
        created: float | None = None,
    ) -> WorkerRecord:
        """A new worker for ``instance``: probed from now on, or destroyed if
        it starts SHUTDOWN. ``created`` is when its create started, if known."""
        ctx = self._ctx
        now = ctx.clock.now()
        record = WorkerRecord(
            instance,
            itype,
            state,
            behavior,
            tags,
            now=now,
            wall=ctx.clock.wall(),
            boot_deadline=boot_deadline,
            added_seq=ctx.next_seq(),
        )
        if created is not None:
            record.created = created
        self.workers[record.id] = record
        ctx.metrics.moved(itype.name, None, state)
        self._publish(PoolEventKind.STATE, record, reason=reason, state=state)
        ctx.logger.info(
            "worker %s (%s) %s: %s",
            record.id,
            itype.name,
            state.value,
            reason,
            extra={"instance_id": record.id, "instance_type": itype.name, "state": state.value},
        )
        if state is WorkerState.SHUTDOWN:
            self.start_destroy(record)
        else:
            self.probes.schedule(record, now)
            self.timeouts.arm(record)
        return record

    def set_state(self, record: WorkerRecord, state: WorkerState, reason: str) -> None:
        """Move ``record`` to ``state`` (nothing if it is there already)."""
        previous = record.state
        if previous is state:
            return
        ctx = self._ctx
        record.state = state
        record.since = ctx.clock.now()
        record.since_wall = ctx.clock.wall()
        ctx.metrics.moved(record.itype.name, previous, state)
        self._publish(PoolEventKind.STATE, record, reason=reason, state=state, previous=previous)
        # Leases move workers between IDLE and RUNNING all the time: that is
        # DEBUG, except a worker's first IDLE after its boot.
        level = logging.DEBUG if state in (WorkerState.RUNNING, WorkerState.IDLE) else logging.INFO
        if previous in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            level = logging.INFO
        ctx.logger.log(
            level,
            "worker %s (%s) %s -> %s: %s",
            record.id,
            record.itype.name,
            previous.value,
            state.value,
            reason,
            extra={
                "instance_id": record.id,
                "instance_type": record.itype.name,
                "state": state.value,
                "previous": previous.value,
            },
        )
        self.leases.refresh(record)
        self.timeouts.arm(record)

    def shutdown(self, record: WorkerRecord, reason: str) -> None:
        """Give up on ``record``: SHUTDOWN, its lease lost, its instance destroyed."""
        if record.state is WorkerState.SHUTDOWN or record.removed:
            return
        self._end_work(record, reason)
        self.set_state(record, WorkerState.SHUTDOWN, reason)
        self.start_destroy(record)

    def remove(self, record: WorkerRecord, reason: str) -> None:
        """The instance is gone from listings: forget the worker."""
        ctx = self._ctx
        del self.workers[record.id]
        record.removed = True
        self._end_work(record, reason)
        self.leases.refresh(record)
        ctx.metrics.moved(record.itype.name, record.state, None)
        self._publish(PoolEventKind.GONE, record, reason=reason, state=record.state)
        ctx.logger.info(
            "worker %s (%s) gone: %s",
            record.id,
            record.itype.name,
            reason,
            extra={"instance_id": record.id, "instance_type": record.itype.name},
        )
        self.executors.discard(record)

    def _end_work(self, record: WorkerRecord, reason: str) -> None:
        """Stop what runs on ``record``: its probe, and its lease's commands."""
        if record.probe_scope is not None:
            record.probe_scope.cancel()
        if record.lease is not None:
            record.lease.lose(reason)

    async def set_idle_behavior(self, record: WorkerRecord, behavior: IdleBehavior) -> None:
        """Write ``behavior`` to the instance's tag, then act on it: in a
        critical section, so that a cancelled caller leaves the tag and the
        pool agreeing (old or new behaviour). Raises the tag write's error."""
        # One write at a time per worker: each starts from the tags the last one left.
        async with record.tag_lock:
            tags = {**record.tags, IDLE_BEHAVIOR_TAG: behavior.value}

            async def section() -> None:
                with anyio.fail_after(CALL_LIMIT):
                    await record.instance.set_tags(tags)
                record.tags = tags
                record.idle_behavior = behavior
                self._publish(PoolEventKind.IDLE_BEHAVIOR, record, reason="set", behavior=behavior)
                if record.removed:
                    return
                if behavior is IdleBehavior.DRAIN and record.state is WorkerState.IDLE:
                    self.shutdown(record, "idle behaviour drain")
                else:
                    self.leases.refresh(record)
                    self.timeouts.arm(record)

            await run_critical(section)

    def _publish(
        self,
        kind: PoolEventKind,
        record: WorkerRecord,
        *,
        reason: str,
        state: WorkerState | None = None,
        previous: WorkerState | None = None,
        behavior: IdleBehavior | None = None,
    ) -> None:
        """Publish an event about ``record``."""
        self._ctx.hub.publish(
            PoolEvent(
                kind=kind,
                time=self._ctx.clock.wall(),
                instance_id=record.id,
                instance_type=record.itype.name,
                state=state,
                previous=previous,
                idle_behavior=behavior,
                reason=reason,
            )
        )

    # ------------------------------------------------------------------ destroys

    def start_destroy(self, record: WorkerRecord) -> None:
        """Call destroy for ``record`` in the background, unless a call is
        under way (the timeouts retry it every ``timeout_shutdown``)."""
        if record.destroying or record.removed or self._ctx.tg is None:
            return
        record.destroying = True
        self._ctx.tg.start_soon(self._destroy, record)

    async def _destroy(self, record: WorkerRecord) -> None:
        ctx = self._ctx
        outcome = "error"
        try:
            with anyio.fail_after(CALL_LIMIT):
                await record.instance.destroy()
            outcome = "ok"
        except Exception as exc:
            ctx.logger.info(
                "destroying %s failed (retried in %s s): %s",
                record.id,
                ctx.config.timeout_shutdown,
                printable(str(exc)),
                extra={"instance_id": record.id},
            )
        finally:
            # Even after a success: the worker goes only when a listing no
            # longer shows the instance, and until then destroy is retried.
            record.destroying = False
            record.next_destroy_at = ctx.clock.now() + ctx.config.timeout_shutdown
            ctx.metrics.destroy(outcome)
            if outcome == "ok":
                self._holds.instance_destroyed()
            self.timeouts.arm(record)
            ctx.request_sync()

    async def close(self, reason: str) -> None:
        """The pool stops: every lease is lost (``reason``) and every executor
        closed (see :meth:`Executors.close_all`). The instances stay."""
        for record in self.workers.values():
            if record.lease is not None:
                record.lease.lose(reason)
        await self.executors.close_all(self.workers.values())
