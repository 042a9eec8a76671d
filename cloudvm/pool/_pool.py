"""WorkerPool: the fleet a dispatcher asks for, kept honest in the background.

The pool is a facade over its parts, each in its own module, which share a
``PoolContext`` (``_context``: config, clock, logger, metrics, events, set):

- ``_fleet``: the workers (``_worker``: their records), the moves of their
  state machine and the destroy calls; it makes the parts a move sets going:
  - ``_leases``: idle workers handed to waiting leases, first come first served;
  - ``_probes``: the probe loop, at most ``max_probes_per_second``;
  - ``_timeouts``: the timer loop acting on each worker's next deadline
    (boot, probe, idle, destroy retry);
- ``_executors``: each worker's executor, made on first use, always closed;
- ``_creates``: the create calls (at most ``max_concurrent_creates``) and the
  bookkeeping that settles every one;
- ``_holds``: quota, capacity and rate-limit holds on creates;
- ``_listing``: the sync loop, listing every ``sync_interval`` (and soon
  after every change) and reconciling: unknown instances adopted, vanished
  ones dropped.

The loops wait on the pool's clock (``_clock``) through queues of deadlines
(``_scheduling``).

Everything the pool knows lives in plain dicts changed synchronously between
awaits (the httpcore habit): a task cancelled at any await point leaves them
consistent. Its background work runs in one anyio task group that the pool
enters in ``__aenter__`` and cancels in ``__aexit__``: the three loops, and
one task per create, destroy call and probe.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import asyncssh

from .._protocols import Executor, ExecutorTarget, InstanceSet
from .._resilient import ResiliencePolicy, ResilientInstanceSet, resilient
from .._text import printable
from .._types import InstanceID, InstanceType
from ._clock import PoolClock, SystemPoolClock, Waits
from ._config import IdleBehavior, PoolConfig, WorkerState, parse_pool_config
from ._context import PoolContext
from ._creates import Creates
from ._events import DEFAULT_MAX_BUFFERED, EventHub, PoolEvent, Subscription
from ._executors import Executors
from ._fleet import Fleet
from ._holds import CreateHolds
from ._leases import LeaseContext, LeasedWorker
from ._listing import Listing
from ._metrics import PoolMetrics
from ._worker import Worker

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["WorkerPool"]


class WorkerPool:
    """Keeps a fleet of workers on an InstanceSet and leases idle ones out.

    The dispatcher asks for workers with :meth:`create` and runs work in
    :meth:`lease`; the pool boots, proves, probes, adopts, times out and
    destroys, as the DESIGN's "The worker pool" describes and
    :class:`PoolConfig` parameterises. A worker is leased only after its host
    key was proven (through its executor) and ``boot_probe_command`` exited 0
    on it; a host that cannot be proven is destroyed.

    The pool's facts about each instance live in its tags (``pool-instance-type``,
    ``pool-idle-behavior``, ``pool-create-token``, ``pool-created-at``), so a
    new pool over the same set (after a crash, on another host) adopts every
    instance. Two pools over sets with different ids never touch each other's
    instances: that is how a fleet is sharded.

    Use it as an async context manager, entered and exited in one task:
    ``__aenter__`` lists the set once (adopting what it holds) and starts the
    background tasks; ``__aexit__`` cancels them, closes the executors and
    leaves every instance running for the next pool. Methods are for one event
    loop; the synchronous ones never wait and make no cloud call.

    Parameters:
        instance_set: any InstanceSet; wrapped with :func:`cloudvm.resilient`
            (on the pool's clock) unless it already is such a wrapper.
        config: a :class:`PoolConfig` or a mapping validated into one.
        signers: keys to log in with; the first one's public key is given to
            every create (None when empty).
        logger: where the pool logs (fields in ``extra=``; never secrets or
            host-chosen text unescaped). None: ``logging.getLogger("cloudvm.pool")``.
        registry: a prometheus registry for the pool's metrics (and the
            wrapper's, when the pool wraps); None records nothing.
        executor_factory: makes each worker's executor from its target (a
            :class:`WorkerTarget`); None makes an :class:`cloudvm.SSHExecutor`
            with ``signers``.
        clock: the pool's time (:class:`PoolClock`); None is real time.

    Raises:
        ConfigError: ``config`` is a mapping with a missing, unknown or invalid
            field (named).
        TypeError: ``instance_set`` is not an InstanceSet or ``config`` not a
            PoolConfig or mapping.
    """

    def __init__(
        self,
        instance_set: InstanceSet,
        config: PoolConfig | Mapping[str, Any],
        *,
        signers: Sequence[asyncssh.SSHKey],
        logger: logging.Logger | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        executor_factory: Callable[[ExecutorTarget], Executor] | None = None,
        clock: PoolClock | None = None,
    ) -> None:
        parsed = parse_pool_config(config)
        if not isinstance(instance_set, InstanceSet):
            raise TypeError(
                f"instance_set must be an InstanceSet, not {type(instance_set).__name__}"
            )
        clock = clock if clock is not None else SystemPoolClock()
        logger = logger if logger is not None else logging.getLogger("cloudvm.pool")
        if isinstance(instance_set, ResilientInstanceSet):
            wrapped: InstanceSet = instance_set
            policy = instance_set.policy
        else:
            wrapped = resilient(
                instance_set,
                logger=logger.getChild("resilient"),
                registry=registry,
                clock=clock.wall,
                sleep=clock.sleep,
            )
            policy = ResiliencePolicy()
        signers = list(signers)
        public_key = signers[0].convert_to_public() if signers else None
        self._ctx = ctx = PoolContext(
            config=parsed,
            types={itype.name: itype for itype in parsed.instance_types},
            instance_set=wrapped,
            clock=clock,
            waits=Waits(clock),
            logger=logger,
            metrics=PoolMetrics(registry),
            hub=EventHub(),
        )
        self._holds = CreateHolds(ctx, policy)
        executors = Executors(ctx, signers=signers, factory=executor_factory)
        self._fleet = Fleet(ctx, self._holds, executors)
        self._leases = self._fleet.leases
        self._creates = Creates(ctx, self._fleet, self._holds, public_key=public_key)
        self._listing = Listing(ctx, self._fleet, self._creates)
        self._entered = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """List the set once (adopting every instance it holds), then start the
        background tasks. A failed first listing is logged and retried in the
        background; until one succeeds :meth:`create` returns False.

        Raises:
            RuntimeError: the pool was entered before.
        """
        if self._entered:
            raise RuntimeError("a WorkerPool can be entered once")
        self._entered = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._ctx.tg = tg
        try:
            await self._listing.once()
            tg.start_soon(self._listing.loop)
            tg.start_soon(self._fleet.probes.loop, tg)
            tg.start_soon(self._fleet.timeouts.loop)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop the background tasks (a create in flight finishes recording what
        it made first), end waiting leases with RuntimeError, close every
        executor and end event iterators. Instances stay: a new pool adopts them.
        """
        tg, self._ctx.tg = self._ctx.tg, None
        self._leases.stop()
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                    # The caller's own error propagates as it is, not in a group.
                    await tg.__aexit__(None, None, None)
                    return None
                return await tg.__aexit__(exc_type, exc, tb)
            return None
        finally:
            await self._fleet.close("the pool stopped")
            self._ctx.hub.close()

    # ------------------------------------------------------------------ queries

    @property
    def config(self) -> PoolConfig:
        """The validated config."""
        return self._ctx.config

    @property
    def instance_set(self) -> InstanceSet:
        """The set the pool works through (the resilient wrapper)."""
        return self._ctx.instance_set

    def workers(self) -> list[Worker]:
        """A snapshot of every worker the pool holds (instances being destroyed
        included; creates not yet answered are not workers)."""
        return [record.snapshot() for record in self._fleet.workers.values()]

    def counts(self) -> dict[str, dict[WorkerState, int]]:
        """Workers by instance type name and state, every state present (0 if
        none). Types in the config always appear; an adopted instance of an
        unknown type appears under its tag's name until it is destroyed."""
        counts = {name: dict.fromkeys(WorkerState, 0) for name in self._ctx.types}
        for record in self._fleet.workers.values():
            counts.setdefault(record.itype.name, dict.fromkeys(WorkerState, 0))
            counts[record.itype.name][record.state] += 1
        return counts

    def unallocated(self) -> dict[str, int]:
        """Workers expected to be available for leases soon, by type name:
        creates not yet answered (or whose answer was lost, until a listing
        settles it) plus UNKNOWN, BOOTING and IDLE workers whose idle behaviour
        is RUN. Leased ones are not counted. Compare it with :meth:`waiting`
        to decide whether to :meth:`create`."""
        found = dict.fromkeys(self._ctx.types, 0)
        for create in self._creates.unanswered():
            found[create.itype.name] += 1
        for record in self._fleet.workers.values():
            if (
                record.state in (WorkerState.UNKNOWN, WorkerState.BOOTING, WorkerState.IDLE)
                and record.idle_behavior is IdleBehavior.RUN
                and record.itype.name in found
            ):
                found[record.itype.name] += 1
        return found

    def waiting(self) -> dict[str, int]:
        """Leases waiting for a worker, by type name."""
        return self._leases.waiting()

    def at_quota(self) -> bool:
        """True while creates are refused because the cloud answered QuotaError:
        until an instance is destroyed, or the wrapper's ``quota_hold`` passes.
        :meth:`create` returns False meanwhile, without a cloud call."""
        return self._holds.at_quota()

    def at_capacity(self, itype: InstanceType) -> bool:
        """True while a remembered CapacityError covers ``itype`` (its provider
        type, its quota group or every type) for the wrapper's
        ``capacity_hold``. :meth:`create` of it returns False meanwhile.

        Raises:
            ValueError / TypeError: ``itype`` is not one of the config's types.
        """
        return self._holds.shortage_for(self._resolve(itype)) is not None

    def is_held(self) -> bool:
        """True during a create hold after a RateLimitError (until its
        ``earliest_retry``, at least one second)."""
        return self._holds.is_held()

    # ------------------------------------------------------------------ asking

    def create(self, itype: InstanceType) -> bool:
        """Ask for one more worker of ``itype``; returns at once.

        The create runs in the background (at most ``max_concurrent_creates``
        at a time, through the resilient wrapper) and the instance becomes a
        BOOTING worker. A create whose response was lost is not repeated: the
        next listing finds the instance by its create token.

        Returns:
            True if the create was started; False (and no cloud call) while at
            quota, at capacity for ``itype``, during a rate-limit hold, at
            ``max_instances``, while draining, or before the pool has listed
            the set once.

        Raises:
            ValueError: ``itype`` is not in the config (matched by name).
            TypeError: ``itype`` is not an InstanceType.
            RuntimeError: the pool is not running.
        """
        itype = self._resolve(itype)
        tg = self._ctx.check_running()
        if (
            self._fleet.draining
            or self._listing.last_at is None
            or self._holds.refusal(itype) is not None
        ):
            return False
        # Instances the pool has or may soon have: workers, and creates not answered yet.
        instances = len(self._creates.unanswered()) + len(self._fleet.workers)
        if instances >= self._ctx.config.max_instances:
            return False
        self._creates.start(itype, tg)
        return True

    def shutdown(self, itype: InstanceType) -> bool:
        """Destroy one worker of ``itype``: the longest-idle IDLE one, else the
        newest BOOTING (or UNKNOWN) one.

        Returns:
            True if a worker was chosen (it is SHUTDOWN now), False if none.

        Raises:
            ValueError / TypeError: ``itype`` is not one of the config's types.
            RuntimeError: the pool is not running.
        """
        itype = self._resolve(itype)
        self._ctx.check_running()
        candidates = [r for r in self._fleet.workers.values() if r.itype.name == itype.name]
        idle = [r for r in candidates if r.state is WorkerState.IDLE]
        if idle:
            self._fleet.shutdown(min(idle, key=lambda r: r.since), "asked to shut down")
            return True
        booting = [r for r in candidates if r.state in (WorkerState.BOOTING, WorkerState.UNKNOWN)]
        if booting:
            # The newest has the most boot left to wait for.
            self._fleet.shutdown(max(booting, key=lambda r: r.created), "asked to shut down")
            return True
        return False

    async def set_idle_behavior(self, id: InstanceID, behavior: IdleBehavior) -> None:
        """Set a worker's idle behaviour and keep it in the instance's tag.

        RUN: leasable when idle; HOLD: kept, never leased nor destroyed for
        being idle; DRAIN: destroyed as soon as it is idle. The tag is written
        in a critical section, so a cancelled caller leaves the tag and the
        pool agreeing (old or new behaviour).

        Raises:
            KeyError: the pool has no worker ``id``.
            TypeError: ``behavior`` is not an IdleBehavior.
            CloudError: the tag could not be written (the behaviour is unchanged).
            RuntimeError: the pool is not running.
        """
        if not isinstance(behavior, IdleBehavior):
            raise TypeError(f"behavior must be an IdleBehavior, not {type(behavior).__name__}")
        self._ctx.check_running()
        record = self._fleet.workers.get(id)
        if record is None:
            raise KeyError(f"the pool has no worker {id!r}")
        await self._fleet.set_idle_behavior(record, behavior)

    def lease(
        self, itype: InstanceType, *, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[LeasedWorker]:
        """A lease on an IDLE worker of ``itype`` whose idle behaviour is RUN.

        Entering waits (first come, first served among leases of the type) for
        such a worker, at most ``timeout`` seconds on the pool clock (None: no
        limit); the worker is RUNNING inside. Leaving returns it to IDLE; if its
        connection or host broke meanwhile it is probed before any new lease
        and destroyed if the probe fails. A waiting lease that is cancelled (by
        ``Task.cancel``, ``wait_for`` or an anyio scope) leaves nothing reserved.

        Raises (on entering):
            TimeoutError: no worker came within ``timeout``.
            RuntimeError: the pool is not running or stopped meanwhile.
        Raises (here):
            ValueError / TypeError: ``itype`` is not one of the config's types,
                or ``timeout`` is negative.
        """
        itype = self._resolve(itype)
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be None or a finite number >= 0, got {timeout!r}")
        return LeaseContext(self._leases, itype, timeout)

    def events(self, *, max_buffered: int = DEFAULT_MAX_BUFFERED) -> AsyncIterator[PoolEvent]:
        """Every state change and hold from now on, in order (a :class:`Subscription`).

        Any number of subscribers may iterate at once; each has its own buffer
        of ``max_buffered`` events. A slow subscriber never blocks the pool:
        while its buffer is full new events are dropped for it, and it later
        receives one ``DROPPED`` event (with the count) where they are missing.
        Iteration ends when the pool stops or the iterator's ``aclose()`` is
        awaited.

        Raises:
            ValueError: ``max_buffered`` is less than 1.
        """
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be at least 1, got {max_buffered!r}")
        sub: Subscription = self._ctx.hub.subscribe(max_buffered)
        return sub

    async def drain(self) -> None:
        """Destroy every worker (leased ones too: their leases get WorkerLost)
        and every instance a listing shows, retrying destroys every
        ``timeout_shutdown``; return when no create is in flight, the pool holds
        no worker and a listing that started after that shows no instance.
        Meanwhile :meth:`create` returns False.

        Raises:
            RuntimeError: the pool is not running.
        """
        ctx, fleet, listing = self._ctx, self._fleet, self._listing
        ctx.check_running()
        fleet.draining += 1
        try:
            while True:
                for record in list(fleet.workers.values()):
                    fleet.shutdown(record, "drain")
                # Only a listing that starts after this shows what is left.
                mark = ctx.next_seq()
                ctx.request_sync()
                while listing.last_seq < mark:
                    ctx.check_running()
                    await listing.next_listing()
                if not fleet.workers and not self._creates.pending and listing.last_empty:
                    return
        finally:
            fleet.draining -= 1

    # ------------------------------------------------------------------ helpers

    def _resolve(self, itype: InstanceType) -> InstanceType:
        """The config's own type of ``itype``'s name (types match by name)."""
        if not isinstance(itype, InstanceType):
            raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
        known = self._ctx.types.get(itype.name)
        if known is None:
            raise ValueError(
                f"instance type {printable(itype.name)!r} is not in the pool config; "
                f"known types: {', '.join(sorted(self._ctx.types))}"
            )
        return known
