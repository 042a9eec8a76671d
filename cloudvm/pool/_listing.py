"""Listing: the set's instances, listed and reconciled with the fleet.

Listings are the truth: an instance no worker exists for is adopted (from its
tags), a worker whose instance is no longer listed is forgotten, and a
create whose answer was lost is settled. The sync loop lists every
``sync_interval`` and soon after any part asks (a create, a destroy, a probe
that found no address yet), at most once every ``MIN_SYNC_GAP``.
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime

import anyio

from .._errors import CloudError, RateLimitError
from .._protocols import Instance
from .._text import printable
from .._types import InstanceID, InstanceType
from ._clock import seconds_until
from ._config import CREATED_TAG, IDLE_BEHAVIOR_TAG, INSTANCE_TYPE_TAG, IdleBehavior, WorkerState
from ._context import CALL_LIMIT, PoolContext
from ._creates import Creates
from ._fleet import Fleet

__all__ = ["MIN_SYNC_GAP", "TOMBSTONE_SECONDS", "Listing"]

#: Listings start at least this many seconds apart on the pool clock, so that a
#: burst of changes costs one listing, not one each.
MIN_SYNC_GAP = 1.0
#: Destroyed ids are remembered this long (pool clock) so that a stale listing
#: showing one again starts another destroy instead of an adoption.
TOMBSTONE_SECONDS = 3600.0


class Listing:
    """Lists the set and reconciles the fleet with what it shows."""

    def __init__(self, ctx: PoolContext, fleet: Fleet, creates: Creates) -> None:
        self._ctx = ctx
        self._fleet = fleet
        self._creates = creates
        self._tombstones: dict[InstanceID, float] = {}
        self._synced = anyio.Event()
        #: The start sequence number of the latest successful listing.
        self.last_seq = 0
        #: Whether it showed no instance.
        self.last_empty = False
        #: When it started (pool clock); None before the first.
        self.last_at: float | None = None

    async def next_listing(self) -> None:
        """Return when the next successful listing has been reconciled."""
        await self._synced.wait()

    async def loop(self) -> None:
        """List when due or asked, forever."""
        ctx = self._ctx
        while True:
            ctx.sync_wanted = anyio.Event()
            last = self.last_at if self.last_at is not None else -math.inf
            await ctx.waits.for_event(
                ctx.sync_wanted, last + ctx.config.sync_interval - ctx.clock.now()
            )
            gap = last + MIN_SYNC_GAP - ctx.clock.now()
            if gap > 0:
                await ctx.clock.sleep(gap)
            retry_at = await self.once()
            if retry_at is not None:
                await ctx.clock.sleep(retry_at)

    async def once(self) -> float | None:
        """List the set and reconcile. Returns None, or the seconds to wait
        before trying again after a failed listing."""
        ctx = self._ctx
        seq = ctx.next_seq()
        started = ctx.clock.now()
        try:
            with anyio.fail_after(CALL_LIMIT):
                listed = await ctx.instance_set.instances()
        except (CloudError, OSError, TimeoutError) as exc:
            ctx.logger.warning("listing the instance set failed: %s", printable(str(exc)))
            if isinstance(exc, RateLimitError):
                return seconds_until(ctx.clock, exc.earliest_retry, at_least=MIN_SYNC_GAP)
            return min(ctx.config.sync_interval, ctx.config.timeout_shutdown)
        self.last_at = started
        self._apply(listed, seq)
        self.last_seq = seq
        self.last_empty = not listed
        synced, self._synced = self._synced, anyio.Event()
        synced.set()
        return None

    def _apply(self, listed: list[Instance], seq: int) -> None:
        fleet = self._fleet
        # The contract lets a listing show one instance twice: the first counts.
        seen: dict[InstanceID, Instance] = {}
        for instance in listed:
            seen.setdefault(instance.id, instance)
        now = self._ctx.clock.now()
        for id, instance in seen.items():
            record = fleet.workers.get(id)
            if record is not None:
                # The newest listing's instance: its address may have appeared.
                record.instance = instance
                record.target.instance = instance
                continue
            if not self._creates.found(instance):
                self._adopt(instance)
        for record in list(fleet.workers.values()):
            # A worker added after this listing started may not be in it yet.
            if record.id not in seen and record.added_seq < seq:
                destroyed = record.state is WorkerState.SHUTDOWN
                fleet.remove(record, "destroyed" if destroyed else "vanished from listings")
                if destroyed:
                    self._tombstones[record.id] = now
        self._creates.settle(seq)
        for id, when in list(self._tombstones.items()):
            if now - when > TOMBSTONE_SECONDS:
                del self._tombstones[id]

    def _adopt(self, instance: Instance) -> None:
        """A worker for an instance this pool object did not create (an
        earlier pool's, after a restart): its type and idle behaviour come
        from its tags, its boot deadline from its creation time."""
        ctx = self._ctx
        config = ctx.config
        tags = instance.tags
        name = tags.get(INSTANCE_TYPE_TAG, "")
        itype = ctx.types.get(name)
        try:
            behavior = IdleBehavior(tags.get(IDLE_BEHAVIOR_TAG, IdleBehavior.RUN.value))
        except ValueError:
            behavior = IdleBehavior.RUN
        now = ctx.clock.now()
        age = 0.0
        created_text = tags.get(CREATED_TAG)
        if created_text is not None:
            with contextlib.suppress(ValueError, TypeError):
                created_at = datetime.fromisoformat(created_text)
                age = max((ctx.clock.wall() - created_at).total_seconds(), 0.0)
        reason, state = "adopted", WorkerState.UNKNOWN
        if itype is None:
            # Kept (as SHUTDOWN, so destroyed) under its tag's name, so that
            # counts() and events say what it was.
            itype = InstanceType(
                name=name,
                provider_type=instance.provider_type,
                vcpus=0,
                ram=0,
                scratch=0,
                included_scratch=0,
                added_scratch=0,
                price=0.0,
            )
            reason = f"adopted with an unknown instance type {printable(name)!r}"
            state = WorkerState.SHUTDOWN
        elif instance.id in self._tombstones:
            reason, state = "listed again after it was destroyed", WorkerState.SHUTDOWN
        elif self._fleet.draining:
            reason, state = "adopted while draining", WorkerState.SHUTDOWN
        # A young instance gets what is left of timeout_booting; an older one
        # (an earlier pool's worker, say) is judged like a worker whose probes
        # fail: timeout_probe from now. Either way at least one probe's time.
        if age < config.timeout_booting:
            boot_deadline = now - age + config.timeout_booting
        else:
            boot_deadline = now + config.timeout_probe
        boot_deadline = max(boot_deadline, now + config.timeout_probe_command)
        self._fleet.add(
            instance,
            itype,
            state,
            behavior,
            tags,
            boot_deadline=boot_deadline,
            reason=reason,
            created=now - age,
        )
