"""A worker as the pool keeps it (its record), and what callers see of it."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import asyncssh

from .._protocols import Executor, Instance
from .._types import InstanceID, InstanceTags, InstanceType
from ._config import IdleBehavior, WorkerState

if TYPE_CHECKING:
    from ._leases import Lease

__all__ = ["Worker", "WorkerRecord", "WorkerTarget"]


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


class WorkerRecord:
    """Everything the pool knows about one worker. Changed only by the pool's
    parts, synchronously between awaits."""

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
        self.lease: Lease | None = None
        self.tag_lock = anyio.Lock()
        # destroys
        self.destroying = False
        self.next_destroy_at = 0.0

    def leasable(self) -> bool:
        """Whether a lease may take it: IDLE, idle behaviour RUN, and no broken
        lease waiting for a probe. It is also when ``timeout_idle`` runs: a
        HOLD worker is kept however long it idles."""
        return (
            not self.removed
            and self.state is WorkerState.IDLE
            and self.idle_behavior is IdleBehavior.RUN
            and not self.suspect
        )

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
