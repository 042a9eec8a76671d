"""Leases: idle workers handed to waiting callers, first come first served."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import asyncssh

from .._errors import CloudError, ExecuteError, HostKeyError
from .._protocols import Executor
from .._text import printable
from .._types import InstanceID, InstanceType
from ._config import IdleBehavior, WorkerState
from ._context import PoolContext
from ._worker import WorkerRecord

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["Lease", "LeaseContext", "LeasedWorker", "Leases", "WorkerLost"]


class WorkerLost(CloudError):
    """Raised by :meth:`LeasedWorker.execute` when the lease's worker was lost:
    its connection or host broke during the command, its instance vanished
    from listings, or the pool destroyed it. The command may or may not have
    run. The worker is probed before any new lease and destroyed if it fails."""


class Lease:
    """One lease's life: the cancel scopes of its running commands, and why
    it was lost, if it was."""

    __slots__ = ("broken", "ended", "lost", "scopes")

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.lost: str | None = None  # why, once lost
        self.broken = False  # the connection or host broke: probe before reuse
        self.ended = False

    def lose(self, reason: str) -> None:
        """The worker is lost: cancel the lease's commands (they raise WorkerLost)."""
        if self.lost is None:
            self.lost = reason
        for scope in self.scopes:
            scope.cancel()


class LeasedWorker:
    """The worker a lease holds: run commands on it until the lease ends.

    Safe to use from many tasks of the lease's holder at once (commands share
    the worker's one connection).
    """

    def __init__(self, leases: Leases, record: WorkerRecord, lease: Lease) -> None:
        self._leases = leases
        self._record = record
        self._lease = lease

    @property
    def id(self) -> InstanceID:
        """The instance's id."""
        return self._record.id

    @property
    def instance_type(self) -> InstanceType:
        """The worker's instance type (the pool config's)."""
        return self._record.itype

    async def execute(
        self, cmd: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[bytes, bytes]:
        """Run ``cmd`` on the worker through its executor; see
        :meth:`cloudvm.Executor.execute`. Returns ``(stdout, stderr)``.

        Raises:
            ExecuteError: the command exited non-zero (the caller's business:
                the worker stays healthy).
            WorkerLost: the worker was lost before or during the command (its
                connection or host broke, it vanished, or the pool destroyed
                it); the command may or may not have run.
            ValueError: ``env`` is malformed.
            RuntimeError: the lease has ended.
        """
        lease = self._lease
        if lease.ended:
            raise RuntimeError("this lease has ended; take a new one")
        if lease.lost is not None:
            raise WorkerLost(f"worker {self.id} was lost: {lease.lost}")
        executor = self._leases.executor_of(self._record)
        scope = anyio.CancelScope()
        lease.scopes.add(scope)
        try:
            with scope:
                return await executor.execute(cmd, stdin, env)
        except (OSError, asyncssh.Error, TimeoutError, CloudError, RuntimeError) as exc:
            if isinstance(exc, ExecuteError):
                raise  # the command's own failure: the worker is fine
            self._leases.lease_broke(self._record, lease, exc)
            raise WorkerLost(f"worker {self.id} was lost: {lease.lost}") from exc
        finally:
            lease.scopes.discard(scope)
        # Only the pool cancels the scope: it lost the worker.
        raise WorkerLost(f"worker {self.id} was lost: {lease.lost}")

    def __repr__(self) -> str:
        return f"<LeasedWorker {self.id} {self._record.itype.name}>"


class _Waiter:
    """One lease waiting for an idle worker."""

    __slots__ = ("event", "record", "stopped")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.record: WorkerRecord | None = None  # the worker handed to it
        self.stopped = False  # the pool stopped


class LeaseContext:
    """What :meth:`WorkerPool.lease` returns: entering waits for a worker."""

    def __init__(self, leases: Leases, itype: InstanceType, timeout: float | None) -> None:
        self._leases = leases
        self._itype = itype
        self._timeout = timeout
        self._held: tuple[WorkerRecord, Lease] | None = None

    async def __aenter__(self) -> LeasedWorker:
        if self._held is not None:
            raise RuntimeError("a lease context can be entered once")
        record = await self._leases.acquire(self._itype, self._timeout)
        assert record.lease is not None
        self._held = (record, record.lease)
        return LeasedWorker(self._leases, record, record.lease)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._held is not None
        self._leases.release(*self._held)


class Leases:
    """The leasable workers of each type, longest idle first, and the leases
    waiting for one, first come first served."""

    def __init__(self, ctx: PoolContext, fleet: Fleet) -> None:
        self._ctx = ctx
        self._fleet = fleet
        self._idle: dict[str, collections.OrderedDict[InstanceID, WorkerRecord]] = {
            name: collections.OrderedDict() for name in ctx.types
        }
        self._waiters: dict[str, collections.deque[_Waiter]] = {
            name: collections.deque() for name in ctx.types
        }

    def waiting(self) -> dict[str, int]:
        """Leases waiting for a worker, by type name."""
        return {name: len(queue) for name, queue in self._waiters.items()}

    def has_waiters(self, name: str) -> bool:
        return bool(self._waiters[name])

    def refresh(self, record: WorkerRecord) -> None:
        """``record`` may have become leasable or stopped being so: follow it
        (and hand it to a waiting lease if one waits)."""
        idle = self._idle.get(record.itype.name)
        if idle is None:  # an adopted instance of a type the config lacks
            return
        if record.leasable():
            if record.id not in idle:
                record.idle_since = self._ctx.clock.now()  # timeout_idle counts from here
                idle[record.id] = record
                self._dispatch(record.itype.name)
        else:
            idle.pop(record.id, None)

    def _dispatch(self, name: str) -> None:
        """Give idle workers to waiting leases, first come first served."""
        queue, idle = self._waiters[name], self._idle[name]
        while queue and idle:
            waiter = queue.popleft()
            waiter.record = self._hand_out(idle)
            waiter.event.set()

    def _hand_out(self, idle: collections.OrderedDict[InstanceID, WorkerRecord]) -> WorkerRecord:
        """The longest idle of ``idle``, RUNNING now under a new lease."""
        _, record = idle.popitem(last=False)
        record.lease = Lease()
        self._fleet.set_state(record, WorkerState.RUNNING, "leased")
        return record

    async def acquire(self, itype: InstanceType, timeout: float | None) -> WorkerRecord:
        """Wait (at most ``timeout`` seconds) for a worker of ``itype`` and
        lease it: the record returned is RUNNING and holds the new lease.

        Raises:
            TimeoutError: no worker came within ``timeout``.
            RuntimeError: the pool is not running, or stopped meanwhile.
        """
        ctx = self._ctx
        ctx.check_running()
        name = itype.name
        started = ctx.clock.now()
        queue, idle = self._waiters[name], self._idle[name]
        if not queue and idle:
            record = self._hand_out(idle)
            ctx.metrics.lease_waited(name, 0.0)
            return record
        waiter = _Waiter()
        queue.append(waiter)
        try:
            await ctx.waits.for_event(waiter.event, timeout)
        except BaseException:
            self._abandon(name, waiter)
            raise
        got = waiter.record
        if got is None:
            self._abandon(name, waiter)
            if waiter.stopped:
                raise RuntimeError("the WorkerPool stopped while the lease waited")
            raise TimeoutError(f"no {name} worker became idle within {timeout} s")
        ctx.metrics.lease_waited(name, ctx.clock.now() - started)
        return got

    def _abandon(self, name: str, waiter: _Waiter) -> None:
        """A waiter gave up: leave nothing reserved for it (a worker handed to
        it meanwhile goes back)."""
        with contextlib.suppress(ValueError):
            self._waiters[name].remove(waiter)
        record, waiter.record = waiter.record, None
        if record is not None and record.lease is not None:
            self.release(record, record.lease)

    def release(self, record: WorkerRecord, lease: Lease) -> None:
        """A lease ended: the worker goes back to IDLE (or to a probe first)."""
        if lease.ended:
            return
        lease.ended = True
        if record.lease is lease:
            record.lease = None
        if record.removed or record.state is not WorkerState.RUNNING:
            return
        fleet = self._fleet
        if lease.broken:
            record.suspect = True
        if record.idle_behavior is IdleBehavior.DRAIN:
            fleet.shutdown(record, "idle behaviour drain")
            return
        fleet.set_state(record, WorkerState.IDLE, "lease ended")
        if record.suspect and record.probe_scope is None:
            fleet.probes.schedule(record, self._ctx.clock.now())

    def lease_broke(self, record: WorkerRecord, lease: Lease, exc: BaseException) -> None:
        """A command of ``lease`` failed for the connection's or host's sake:
        the lease is lost, and the worker probed after it (destroyed at once
        if its host key failed)."""
        reason = f"{type(exc).__name__}: {printable(str(exc))}"
        lease.broken = True
        lease.lose(reason)
        if isinstance(exc, HostKeyError):
            self._fleet.shutdown(record, f"host key not proven: {printable(str(exc))}")

    def executor_of(self, record: WorkerRecord) -> Executor:
        return self._fleet.executors.of(record)

    def stop(self) -> None:
        """The pool stops: every waiting lease ends (with RuntimeError)."""
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.stopped = True
                waiter.event.set()
            queue.clear()
