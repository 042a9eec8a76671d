"""A worker as the pool keeps it, the snapshot callers see, and leases."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
import asyncssh

from .._errors import CloudError
from .._protocols import Executor, Instance
from .._types import InstanceID, InstanceTags, InstanceType
from ._config import IdleBehavior, WorkerState

if TYPE_CHECKING:
    from ._pool import WorkerPool

__all__ = [
    "LeasedWorker",
    "PoolClock",
    "SystemPoolClock",
    "Worker",
    "WorkerLost",
    "WorkerTarget",
]


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


class WorkerLost(CloudError):
    """Raised by :meth:`LeasedWorker.execute` when the lease's worker was lost:
    its connection or host broke during the command, its instance vanished
    from listings, or the pool destroyed it. The command may or may not have
    run. The worker is probed before any new lease and destroyed if it fails."""


class WorkerTarget:
    """The ExecutorTarget a pool gives each worker's executor.

    It stays the same object for the worker's life (so the executor keeps its
    connection) while it follows the instance of the latest listing, whose
    ``address`` may appear only after boot. It also has the instance's ``id``
    and ``provider_type``, for executors that want them.
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    @property
    def id(self) -> InstanceID:
        return self.instance.id

    @property
    def provider_type(self) -> str:
        return self.instance.provider_type

    @property
    def address(self) -> str:
        return self.instance.address

    @property
    def remote_user(self) -> str:
        return self.instance.remote_user

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """The instance's own verification: None if ``key`` is its key."""
        await self.instance.verify_host_key(key, conn)

    def __str__(self) -> str:
        return str(self.instance)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Worker:
    """A read-only snapshot of one worker, as :meth:`WorkerPool.workers` returns it.

    ``since`` is when it entered ``state`` (UTC, the pool's clock);
    ``address`` is "" while unknown; ``last_probe`` is when the latest probe
    ended, successful or not (None before the first).
    """

    id: InstanceID
    instance_type: InstanceType
    state: WorkerState
    idle_behavior: IdleBehavior
    since: datetime
    address: str
    last_probe: datetime | None


class _Lease:
    """One lease's life: the cancel scopes of its running commands, and why
    it was lost, if it was."""

    __slots__ = ("broken", "ended", "lost", "scopes")

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.lost: str | None = None  # why, once lost
        self.broken = False  # the connection or host broke: probe before reuse
        self.ended = False

    def lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        for scope in self.scopes:
            scope.cancel()


class _WorkerRecord:
    """Everything the pool knows about one worker. Changed only by the pool,
    synchronously."""

    def __init__(
        self,
        instance: Instance,
        itype: InstanceType,
        state: WorkerState,
        idle_behavior: IdleBehavior,
        tags: InstanceTags,
        *,
        now: float,
        wall: datetime,
        boot_deadline: float,
        added_seq: int,
    ) -> None:
        self.id = instance.id
        self.instance = instance
        self.target = WorkerTarget(instance)
        self.itype = itype
        self.state = state
        self.idle_behavior = idle_behavior
        self.tags = tags
        self.since = now
        self.since_wall = wall
        self.created = now
        self.boot_deadline = boot_deadline
        self.added_seq = added_seq
        self.removed = False
        self.executor: Executor | None = None
        # probes
        self.probe_due = now
        self.probe_scope: anyio.CancelScope | None = None
        self.last_probe: datetime | None = None
        self.last_ok = now  # a booted worker's probe timeout counts from its boot
        self.failing = False
        self.suspect = False  # a lease broke: not leasable until a probe passes
        self.idle_since = now  # when it last became leasable
        # the timer
        self.deadline: float | None = None
        # leases and tags
        self.lease: _Lease | None = None
        self.tag_lock = anyio.Lock()
        # destroys
        self.destroying = False
        self.next_destroy_at = 0.0

    def snapshot(self) -> Worker:
        return Worker(
            id=self.id,
            instance_type=self.itype,
            state=self.state,
            idle_behavior=self.idle_behavior,
            since=self.since_wall,
            address=self.instance.address,
            last_probe=self.last_probe,
        )


class LeasedWorker:
    """The worker a lease holds: run commands on it until the lease ends.

    Safe to use from many tasks of the lease's holder at once (commands share
    the worker's one connection).
    """

    def __init__(self, pool: WorkerPool, record: _WorkerRecord, lease: _Lease) -> None:
        self._pool = pool
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
        executor = self._pool._executor_of(self._record)
        scope = anyio.CancelScope()
        lease.scopes.add(scope)
        try:
            with scope:
                return await executor.execute(cmd, stdin, env)
        except (OSError, asyncssh.Error, TimeoutError, CloudError, RuntimeError) as exc:
            if isinstance(exc, CloudError) and not self._pool._breaks_lease(exc):
                raise  # ExecuteError: the command's own failure
            self._pool._lease_broke(self._record, lease, exc)
            raise WorkerLost(f"worker {self.id} was lost: {lease.lost}") from exc
        finally:
            lease.scopes.discard(scope)
        # Only the pool cancels the scope: it lost the worker.
        raise WorkerLost(f"worker {self.id} was lost: {lease.lost}")

    def __repr__(self) -> str:
        return f"<LeasedWorker {self.id} {self._record.itype.name}>"
