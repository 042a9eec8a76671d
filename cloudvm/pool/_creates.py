"""Creates: the calls the pool makes for ``create()``, and what they owe.

Every create said yes to is remembered until an instance is known for it or
it is known to have made none, so that nothing the pool asked for is
forgotten nor asked for twice: a create whose answer was lost is settled by
the next listing, which finds its instance by its create token.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import datetime

import anyio
import anyio.abc
import asyncssh

from .._critical import run_critical
from .._errors import CapacityError, QuotaError, RateLimitError
from .._protocols import Instance
from .._text import printable
from .._types import InstanceID, InstanceTags, InstanceType
from ._config import (
    CREATED_TAG,
    IDLE_BEHAVIOR_TAG,
    INSTANCE_TYPE_TAG,
    TOKEN_TAG,
    IdleBehavior,
    WorkerState,
)
from ._context import CALL_LIMIT, PoolContext
from ._fleet import Fleet
from ._holds import CreateHolds

__all__ = ["Creates", "PendingCreate"]


@dataclasses.dataclass(eq=False)
class PendingCreate:
    """One ``create()`` the pool said yes to, until an instance is known for it
    or it is known to have made none."""

    token: str
    itype: InstanceType
    started: float
    started_wall: datetime
    instance_id: InstanceID | None = None
    # The call failed in a way that may still have made the instance: the
    # first listing that starts after this sequence number settles it.
    failed_seq: int | None = None


class Creates:
    """The pool's create calls: at most ``max_concurrent_creates`` at a time,
    each in a critical section (a cancelled pool still records what it made)."""

    def __init__(
        self,
        ctx: PoolContext,
        fleet: Fleet,
        holds: CreateHolds,
        *,
        public_key: asyncssh.SSHKey | None,
    ) -> None:
        self._ctx = ctx
        self._fleet = fleet
        self._holds = holds
        self._public_key = public_key
        self._slots = anyio.Semaphore(ctx.config.max_concurrent_creates)
        #: By create token.
        self.pending: dict[str, PendingCreate] = {}

    def unanswered(self) -> list[PendingCreate]:
        """The pending creates no worker exists for yet."""
        return [create for create in self.pending.values() if create.instance_id is None]

    def start(self, itype: InstanceType, tg: anyio.abc.TaskGroup) -> None:
        """Create one ``itype`` instance in the background (the caller checked
        the holds and limits)."""
        clock = self._ctx.clock
        create = PendingCreate(secrets.token_hex(16), itype, clock.now(), clock.wall())
        self.pending[create.token] = create
        tg.start_soon(self._run, create)

    async def _run(self, create: PendingCreate) -> None:
        async with self._slots:
            refused = "draining" if self._fleet.draining else self._holds.refusal(create.itype)
            if refused is not None:
                # Learnt while this create queued: no cloud call.
                del self.pending[create.token]
                self._ctx.metrics.create(create.itype.name, refused)
                return
            await run_critical(lambda: self._call(create))

    async def _call(self, create: PendingCreate) -> None:
        ctx = self._ctx
        itype = create.itype
        tags = {
            **ctx.config.tags,
            INSTANCE_TYPE_TAG: itype.name,
            IDLE_BEHAVIOR_TAG: IdleBehavior.RUN.value,
            TOKEN_TAG: create.token,
            CREATED_TAG: create.started_wall.isoformat(),
        }
        try:
            with anyio.fail_after(CALL_LIMIT):
                instance = await ctx.instance_set.create(
                    itype, ctx.config.image_id, tags, ctx.config.init_command, self._public_key
                )
        except Exception as exc:
            self._failed(create, exc)
            return
        ctx.metrics.create(itype.name, "ok")
        ctx.request_sync()
        self.pending.pop(create.token, None)
        if create.instance_id is not None or instance.id in self._fleet.workers:
            return  # a listing found it first
        create.instance_id = instance.id
        self._add_worker(create, instance, tags, "draining" if self._fleet.draining else "created")

    def _failed(self, create: PendingCreate, exc: Exception) -> None:
        ctx = self._ctx
        holds = self._holds
        name = create.itype.name
        text = printable(str(exc))
        # One error may mean several things (a QuotaError that is also a
        # CapacityError): each applies.
        definite = False  # the provider's answer says nothing was created
        if isinstance(exc, QuotaError):
            definite = True
            ctx.metrics.create(name, "quota")
            holds.hold_quota(text)
        if isinstance(exc, CapacityError):
            definite = True
            ctx.metrics.create(name, "capacity")
            holds.hold_capacity(create.itype, exc, text)
        if isinstance(exc, RateLimitError):
            definite = True
            ctx.metrics.create(name, "rate_limited")
            holds.hold_rate_limit(exc, text)
        if definite:
            self.pending.pop(create.token, None)
            return
        ctx.metrics.create(name, "error")
        ctx.logger.warning(
            "create of a %s worker failed (the next listing tells whether it exists): %s",
            name,
            text,
            extra={"instance_type": name},
        )
        create.failed_seq = ctx.next_seq()
        ctx.request_sync()

    def found(self, instance: Instance) -> bool:
        """A listing shows ``instance``: if one of our creates made it (by its
        token) and no worker exists for it yet, it becomes that create's
        BOOTING worker, seen before (or instead of) the create's answer.
        Returns whether it did."""
        tags = instance.tags
        token = tags.get(TOKEN_TAG)
        create = self.pending.get(token) if token is not None else None
        if create is None or create.instance_id is not None:
            return False
        create.instance_id = instance.id
        if create.failed_seq is not None:
            del self.pending[create.token]  # its call is over: nothing more will come
        self._add_worker(create, instance, tags, "created (found by listing)")
        return True

    def settle(self, seq: int) -> None:
        """A listing that started at ``seq`` is in: a failed create before it
        that it does not show made nothing."""
        for token, create in list(self.pending.items()):
            if create.failed_seq is not None and create.failed_seq < seq:
                del self.pending[token]

    def _add_worker(
        self, create: PendingCreate, instance: Instance, tags: InstanceTags, reason: str
    ) -> None:
        # It boots on the create's clock; while draining it is destroyed at once.
        self._fleet.add(
            instance,
            create.itype,
            WorkerState.SHUTDOWN if self._fleet.draining else WorkerState.BOOTING,
            IdleBehavior.RUN,
            tags,
            boot_deadline=create.started + self._ctx.config.timeout_booting,
            reason=reason,
            created=create.started,
        )
