"""WorkerPool: the fleet a dispatcher asks for, kept honest in the background.

Everything the pool knows lives in plain dicts changed synchronously between
awaits (the httpcore habit): a task cancelled at any await point leaves them
consistent. Its background work runs in one anyio task group that the pool
enters in ``__aenter__`` and cancels in ``__aexit__``:

- the sync loop lists the set every ``sync_interval`` (and soon after every
  change) and reconciles: unknown instances are adopted, vanished ones dropped;
- the probe loop starts each worker's probe when it is due, at most
  ``max_probes_per_second``;
- the timer loop acts on every timeout at its moment (boot, probe, idle,
  destroy retry), from one heap of deadlines;
- one task per create (at most ``max_concurrent_creates`` calling the cloud),
  per destroy call and per probe.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.abc
import asyncssh

from .._critical import run_critical
from .._errors import (
    CapacityError,
    CloudError,
    ExecuteError,
    HostKeyError,
    QuotaError,
    RateLimitError,
)
from .._executor import SSHExecutor
from .._protocols import Executor, ExecutorTarget, Instance, InstanceSet
from .._resilient import ResiliencePolicy, ResilientInstanceSet, resilient
from .._text import printable
from .._types import InstanceID, InstanceTags, InstanceType
from ._config import (
    CREATED_TAG,
    IDLE_BEHAVIOR_TAG,
    INSTANCE_TYPE_TAG,
    TOKEN_TAG,
    IdleBehavior,
    PoolConfig,
    WorkerState,
    parse_pool_config,
)
from ._events import DEFAULT_MAX_BUFFERED, EventHub, PoolEvent, PoolEventKind, Subscription
from ._metrics import PoolMetrics
from ._worker import (
    LeasedWorker,
    PoolClock,
    SystemPoolClock,
    Worker,
    _Lease,
    _WorkerRecord,
)

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["WorkerPool"]

_T = TypeVar("_T")

#: The shortest create hold after a RateLimitError, whatever its earliest_retry.
MIN_CREATE_HOLD = 1.0
#: Listings start at least this many seconds apart on the pool clock, so that a
#: burst of changes costs one listing, not one each.
MIN_SYNC_GAP = 1.0
#: Seconds (real time) a create or destroy call may take before it is given up;
#: it is a bound for the critical sections, not a schedule.
CALL_LIMIT = 900.0
#: Destroyed ids are remembered this long (pool clock) so that a stale listing
#: showing one again starts another destroy instead of an adoption.
TOMBSTONE_SECONDS = 3600.0
# ("type", provider_type, preemptible) | ("group", group, False) | ("all", "", False)
_ShortageKey = tuple[str, str, bool]


@dataclasses.dataclass(eq=False)
class _Create:
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


class _Waiter:
    """One lease waiting for an idle worker."""

    __slots__ = ("event", "record", "stopped")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.record: _WorkerRecord | None = None
        self.stopped = False


class _Bucket:
    """``rate`` tokens per second, up to one second's worth, on the pool clock."""

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._stamp = now

    def delay(self, now: float) -> float:
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def take(self) -> None:
        self._tokens -= 1.0


class _LeaseContext:
    """What :meth:`WorkerPool.lease` returns: entering waits for a worker."""

    def __init__(self, pool: WorkerPool, itype: InstanceType, timeout: float | None) -> None:
        self._pool = pool
        self._itype = itype
        self._timeout = timeout
        self._held: tuple[_WorkerRecord, _Lease] | None = None

    async def __aenter__(self) -> LeasedWorker:
        if self._held is not None:
            raise RuntimeError("a lease context can be entered once")
        record = await self._pool._acquire(self._itype, self._timeout)
        assert record.lease is not None
        self._held = (record, record.lease)
        return LeasedWorker(self._pool, record, record.lease)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._held is not None
        self._pool._release(*self._held)


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
        self._config = parse_pool_config(config)
        if not isinstance(instance_set, InstanceSet):
            raise TypeError(
                f"instance_set must be an InstanceSet, not {type(instance_set).__name__}"
            )
        self._clock: PoolClock = clock if clock is not None else SystemPoolClock()
        self._real_time = type(self._clock) is SystemPoolClock
        self._logger = logger if logger is not None else logging.getLogger("cloudvm.pool")
        if isinstance(instance_set, ResilientInstanceSet):
            self._set: InstanceSet = instance_set
            self._policy = instance_set.policy
        else:
            self._set = resilient(
                instance_set,
                logger=self._logger.getChild("resilient"),
                registry=registry,
                clock=self._clock.wall,
                sleep=self._clock.sleep,
            )
            self._policy = ResiliencePolicy()
        self._signers = list(signers)
        self._public_key = self._signers[0].convert_to_public() if self._signers else None
        self._executor_factory = executor_factory
        self._metrics = PoolMetrics(registry)
        self._hub = EventHub()
        self._types = {itype.name: itype for itype in self._config.instance_types}
        self._workers: dict[InstanceID, _WorkerRecord] = {}
        self._creating: dict[str, _Create] = {}
        self._idle: dict[str, collections.OrderedDict[InstanceID, _WorkerRecord]] = {
            name: collections.OrderedDict() for name in self._types
        }
        self._waiters: dict[str, collections.deque[_Waiter]] = {
            name: collections.deque() for name in self._types
        }
        self._tombstones: dict[InstanceID, float] = {}
        self._quota_until: float | None = None
        self._create_hold_until: float | None = None
        self._shortages: dict[_ShortageKey, float] = {}
        self._draining = 0
        self._seq = itertools.count(1)
        self._order = itertools.count()  # ties in the heaps
        self._probe_heap: list[tuple[float, int, _WorkerRecord]] = []
        self._timer_heap: list[tuple[float, int, _WorkerRecord]] = []
        self._probe_wake = anyio.Event()
        self._timer_wake = anyio.Event()
        self._sync_wanted = anyio.Event()
        self._synced = anyio.Event()
        self._last_sync_seq = 0  # the start sequence of the latest successful listing
        self._last_sync_empty = False
        self._last_sync_at: float | None = None
        self._closing: list[Executor] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._create_slots = anyio.Semaphore(self._config.max_concurrent_creates)
        self._running = False
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
        self._tg = tg
        self._running = True
        try:
            await self._sync_once()
            tg.start_soon(self._sync_loop)
            tg.start_soon(self._probe_loop, tg)
            tg.start_soon(self._timer_loop)
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
        tg, self._tg = self._tg, None
        self._running = False
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.stopped = True
                waiter.event.set()
            queue.clear()
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
            for record in self._workers.values():
                if record.lease is not None:
                    record.lease.lose("the pool stopped")
                if record.executor is not None:
                    self._closing.append(record.executor)
                    record.executor = None
            closing, self._closing = self._closing, []
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                for executor in closing:
                    with contextlib.suppress(Exception):
                        await executor.close()
            self._hub.close()

    def _check_running(self) -> anyio.abc.TaskGroup:
        if not self._running or self._tg is None:
            raise RuntimeError("the WorkerPool is not running; use it inside 'async with'")
        return self._tg

    # ------------------------------------------------------------------ queries

    @property
    def config(self) -> PoolConfig:
        """The validated config."""
        return self._config

    @property
    def instance_set(self) -> InstanceSet:
        """The set the pool works through (the resilient wrapper)."""
        return self._set

    def workers(self) -> list[Worker]:
        """A snapshot of every worker the pool holds (instances being destroyed
        included; creates not yet answered are not workers)."""
        return [record.snapshot() for record in self._workers.values()]

    def counts(self) -> dict[str, dict[WorkerState, int]]:
        """Workers by instance type name and state, every state present (0 if
        none). Types in the config always appear; an adopted instance of an
        unknown type appears under its tag's name until it is destroyed."""
        counts = {name: dict.fromkeys(WorkerState, 0) for name in self._types}
        for record in self._workers.values():
            counts.setdefault(record.itype.name, dict.fromkeys(WorkerState, 0))
            counts[record.itype.name][record.state] += 1
        return counts

    def unallocated(self) -> dict[str, int]:
        """Workers expected to be available for leases soon, by type name:
        creates not yet answered (or whose answer was lost, until a listing
        settles it) plus UNKNOWN, BOOTING and IDLE workers whose idle behaviour
        is RUN. Leased ones are not counted. Compare it with :meth:`waiting`
        to decide whether to :meth:`create`."""
        found = dict.fromkeys(self._types, 0)
        for create in self._creating.values():
            if create.instance_id is None:
                found[create.itype.name] += 1
        for record in self._workers.values():
            if (
                record.state in (WorkerState.UNKNOWN, WorkerState.BOOTING, WorkerState.IDLE)
                and record.idle_behavior is IdleBehavior.RUN
                and record.itype.name in found
            ):
                found[record.itype.name] += 1
        return found

    def waiting(self) -> dict[str, int]:
        """Leases waiting for a worker, by type name."""
        return {name: len(queue) for name, queue in self._waiters.items()}

    def at_quota(self) -> bool:
        """True while creates are refused because the cloud answered QuotaError:
        until an instance is destroyed, or the wrapper's ``quota_hold`` passes.
        :meth:`create` returns False meanwhile, without a cloud call."""
        return self._quota_until is not None and self._clock.now() < self._quota_until

    def at_capacity(self, itype: InstanceType) -> bool:
        """True while a remembered CapacityError covers ``itype`` (its provider
        type, its quota group or every type) for the wrapper's
        ``capacity_hold``. :meth:`create` of it returns False meanwhile.

        Raises:
            ValueError / TypeError: ``itype`` is not one of the config's types.
        """
        return self._shortage_for(self._resolve(itype)) is not None

    def is_held(self) -> bool:
        """True during a create hold after a RateLimitError (until its
        ``earliest_retry``, at least one second)."""
        return self._create_hold_until is not None and self._clock.now() < self._create_hold_until

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
        tg = self._check_running()
        if self._draining or self._last_sync_at is None or self._refusal(itype) is not None:
            return False
        if self._instance_count() >= self._config.max_instances:
            return False
        create = _Create(secrets.token_hex(16), itype, self._clock.now(), self._clock.wall())
        self._creating[create.token] = create
        tg.start_soon(self._run_create, create)
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
        self._check_running()
        candidates = [r for r in self._workers.values() if r.itype.name == itype.name]
        idle = [r for r in candidates if r.state is WorkerState.IDLE]
        if idle:
            self._shutdown(min(idle, key=lambda r: r.since), "asked to shut down")
            return True
        booting = [r for r in candidates if r.state in (WorkerState.BOOTING, WorkerState.UNKNOWN)]
        if booting:
            self._shutdown(max(booting, key=lambda r: r.created), "asked to shut down")
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
        self._check_running()
        record = self._workers.get(id)
        if record is None:
            raise KeyError(f"the pool has no worker {id!r}")
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
                    self._shutdown(record, "idle behaviour drain")
                else:
                    self._refresh_leasable(record)
                    self._arm(record)

            await run_critical(section)

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
        return _LeaseContext(self, itype, timeout)

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
        sub: Subscription = self._hub.subscribe(max_buffered)
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
        self._check_running()
        self._draining += 1
        try:
            while True:
                for record in list(self._workers.values()):
                    self._shutdown(record, "drain")
                mark = next(self._seq)
                self._request_sync()
                while self._last_sync_seq < mark:
                    self._check_running()
                    await self._synced.wait()
                if not self._workers and not self._creating and self._last_sync_empty:
                    return
        finally:
            self._draining -= 1

    # ------------------------------------------------------------------ helpers

    def _resolve(self, itype: InstanceType) -> InstanceType:
        if not isinstance(itype, InstanceType):
            raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
        known = self._types.get(itype.name)
        if known is None:
            raise ValueError(
                f"instance type {printable(itype.name)!r} is not in the pool config; "
                f"known types: {', '.join(sorted(self._types))}"
            )
        return known

    def _instance_count(self) -> int:
        pending = sum(1 for c in self._creating.values() if c.instance_id is None)
        return pending + len(self._workers)

    def _publish(
        self,
        kind: PoolEventKind,
        record: _WorkerRecord | None = None,
        *,
        reason: str = "",
        state: WorkerState | None = None,
        previous: WorkerState | None = None,
        behavior: IdleBehavior | None = None,
        hold: str | None = None,
        until: datetime | None = None,
    ) -> None:
        self._hub.publish(
            PoolEvent(
                kind=kind,
                time=self._clock.wall(),
                instance_id=None if record is None else record.id,
                instance_type=None if record is None else record.itype.name,
                state=state,
                previous=previous,
                idle_behavior=behavior,
                reason=reason,
                hold=hold,
                until=until,
            )
        )

    def _wall_in(self, seconds: float) -> datetime:
        return self._clock.wall() + timedelta(seconds=seconds)

    def _executor_of(self, record: _WorkerRecord) -> Executor:
        if record.executor is None:
            if self._executor_factory is None:
                record.executor = SSHExecutor(
                    record.target, signers=self._signers, logger=self._logger.getChild("ssh")
                )
            else:
                record.executor = self._executor_factory(record.target)
                record.executor.set_signers(*self._signers)
        return record.executor

    async def _wait(self, seconds: float | None, event: anyio.Event) -> None:
        """Return when ``event`` is set or ``seconds`` pass on the pool clock."""
        if event.is_set():
            return
        if seconds is None:
            await event.wait()
            return
        if seconds <= 0:
            await self._clock.sleep(0)
            return
        await self._within(seconds, event.wait)

    async def _within(self, seconds: float, operation: Callable[[], Awaitable[object]]) -> bool:
        """Await ``operation()``, cancelling it after ``seconds`` on the pool
        clock. Returns True if it was cut short."""
        if self._real_time:  # the loop's own timers: no helper task per wait
            with anyio.move_on_after(seconds) as limit:
                await operation()
            return limit.cancelled_caught
        timed_out = False
        async with anyio.create_task_group() as tg:

            async def alarm() -> None:
                nonlocal timed_out
                await self._clock.sleep(seconds)
                timed_out = True
                tg.cancel_scope.cancel()

            tg.start_soon(alarm)
            try:
                await operation()
            finally:
                tg.cancel_scope.cancel()
        return timed_out

    # ------------------------------------------------------------------ state changes

    def _add(
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
    ) -> _WorkerRecord:
        now = self._clock.now()
        record = _WorkerRecord(
            instance,
            itype,
            state,
            behavior,
            tags,
            now=now,
            wall=self._clock.wall(),
            boot_deadline=boot_deadline,
            added_seq=next(self._seq),
        )
        if created is not None:
            record.created = created
        self._workers[record.id] = record
        self._metrics.moved(itype.name, None, state)
        self._publish(PoolEventKind.STATE, record, reason=reason, state=state)
        self._logger.info(
            "worker %s (%s) %s: %s",
            record.id,
            itype.name,
            state.value,
            reason,
            extra={"instance_id": record.id, "instance_type": itype.name, "state": state.value},
        )
        if state is WorkerState.SHUTDOWN:
            self._start_destroy(record)
        else:
            self._schedule_probe(record, now)
            self._arm(record)
        return record

    def _set_state(self, record: _WorkerRecord, state: WorkerState, reason: str) -> None:
        previous = record.state
        if previous is state:
            return
        record.state = state
        record.since = self._clock.now()
        record.since_wall = self._clock.wall()
        self._metrics.moved(record.itype.name, previous, state)
        self._publish(PoolEventKind.STATE, record, reason=reason, state=state, previous=previous)
        level = logging.DEBUG if state in (WorkerState.RUNNING, WorkerState.IDLE) else logging.INFO
        if previous in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            level = logging.INFO
        self._logger.log(
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
        self._refresh_leasable(record)
        self._arm(record)

    def _leasable(self, record: _WorkerRecord) -> bool:
        return (
            not record.removed
            and record.state is WorkerState.IDLE
            and record.idle_behavior is IdleBehavior.RUN
            and not record.suspect
            and record.itype.name in self._idle
        )

    def _refresh_leasable(self, record: _WorkerRecord) -> None:
        idle = self._idle.get(record.itype.name)
        if idle is None:
            return
        if self._leasable(record):
            if record.id not in idle:
                record.idle_since = self._clock.now()  # timeout_idle counts from here
                idle[record.id] = record
                self._dispatch(record.itype.name)
        else:
            idle.pop(record.id, None)

    def _dispatch(self, name: str) -> None:
        """Give idle workers to waiting leases, first come first served."""
        queue, idle = self._waiters[name], self._idle[name]
        while queue and idle:
            waiter = queue.popleft()
            _, record = idle.popitem(last=False)
            self._hand_out(record)
            waiter.record = record
            waiter.event.set()

    def _hand_out(self, record: _WorkerRecord) -> None:
        record.lease = _Lease()
        self._set_state(record, WorkerState.RUNNING, "leased")

    def _shutdown(self, record: _WorkerRecord, reason: str) -> None:
        if record.state is WorkerState.SHUTDOWN or record.removed:
            return
        if record.probe_scope is not None:
            record.probe_scope.cancel()
        if record.lease is not None:
            record.lease.lose(reason)
        self._set_state(record, WorkerState.SHUTDOWN, reason)
        self._start_destroy(record)

    def _remove(self, record: _WorkerRecord, reason: str) -> None:
        """The instance is gone from listings: forget the worker."""
        del self._workers[record.id]
        record.removed = True
        if record.probe_scope is not None:
            record.probe_scope.cancel()
        if record.lease is not None:
            record.lease.lose(reason)
        self._refresh_leasable(record)
        if record.state is WorkerState.SHUTDOWN:
            self._tombstones[record.id] = self._clock.now()
        self._metrics.moved(record.itype.name, record.state, None)
        self._publish(PoolEventKind.GONE, record, reason=reason, state=record.state)
        self._logger.info(
            "worker %s (%s) gone: %s",
            record.id,
            record.itype.name,
            reason,
            extra={"instance_id": record.id, "instance_type": record.itype.name},
        )
        if record.executor is not None:
            executor, record.executor = record.executor, None
            if self._tg is not None:
                self._tg.start_soon(self._close_executor, executor)
            else:  # pragma: no cover - the pool stopped meanwhile
                self._closing.append(executor)

    async def _close_executor(self, executor: Executor) -> None:
        self._closing.append(executor)
        try:
            with anyio.move_on_after(10):
                await executor.close()
        except Exception as exc:  # closing is best effort; the pool closes again on exit
            self._logger.debug("closing an executor failed: %s", printable(str(exc)))
        else:
            with contextlib.suppress(ValueError):
                self._closing.remove(executor)

    # ------------------------------------------------------------------ the timer

    def _arm(self, record: _WorkerRecord) -> None:
        """(Re)compute the worker's next deadline and queue it if it moved."""
        deadline = None if record.removed else self._next_deadline(record)
        if deadline == record.deadline:
            return
        record.deadline = deadline
        if deadline is not None:
            heapq.heappush(self._timer_heap, (deadline, next(self._order), record))
            if self._timer_heap[0][2] is record:
                self._timer_wake.set()

    def _next_deadline(self, record: _WorkerRecord) -> float | None:
        cfg = self._config
        state = record.state
        if state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            return record.boot_deadline
        if state is WorkerState.SHUTDOWN:
            return None if record.destroying else record.next_destroy_at
        times = []
        if record.failing:
            times.append(record.last_ok + cfg.timeout_probe)
        if (
            state is WorkerState.IDLE
            and record.idle_behavior is IdleBehavior.RUN
            and not record.suspect
        ):
            times.append(record.idle_since + cfg.timeout_idle)
        return min(times, default=None)

    def _check(self, record: _WorkerRecord) -> None:
        """Act on whatever timeout has come for ``record``."""
        if record.removed:
            return
        cfg = self._config
        now = self._clock.now()
        state = record.state
        if state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            if now >= record.boot_deadline:
                self._shutdown(
                    record, f"not ready within timeout_booting ({cfg.timeout_booting} s)"
                )
                return
        elif state is WorkerState.SHUTDOWN:
            if not record.destroying and now >= record.next_destroy_at:
                self._start_destroy(record)
        else:
            if record.failing and now >= record.last_ok + cfg.timeout_probe:
                self._shutdown(record, f"probes failing for timeout_probe ({cfg.timeout_probe} s)")
                return
            if (
                state is WorkerState.IDLE
                and record.idle_behavior is IdleBehavior.RUN
                and not record.suspect
                and now >= record.idle_since + cfg.timeout_idle
                and not self._waiters[record.itype.name]
            ):
                self._shutdown(record, f"idle for timeout_idle ({cfg.timeout_idle} s)")
                return
        record.deadline = None
        self._arm(record)

    async def _timer_loop(self) -> None:
        heap = self._timer_heap
        while True:
            self._timer_wake = anyio.Event()
            now = self._clock.now()
            while heap and (heap[0][2].deadline != heap[0][0] or heap[0][2].removed):
                heapq.heappop(heap)  # superseded
            if not heap:
                await self._wait(None, self._timer_wake)
                continue
            due = heap[0][0]
            if due > now:
                await self._wait(due - now, self._timer_wake)
                continue
            _, _, record = heapq.heappop(heap)
            record.deadline = None
            self._check(record)
            await anyio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ probes

    def _schedule_probe(self, record: _WorkerRecord, due: float) -> None:
        record.probe_due = due
        heapq.heappush(self._probe_heap, (due, next(self._order), record))
        if self._probe_heap[0][2] is record:
            self._probe_wake.set()

    async def _probe_loop(self, tg: anyio.abc.TaskGroup) -> None:
        heap = self._probe_heap
        bucket = _Bucket(self._config.max_probes_per_second, self._clock.now())
        while True:
            self._probe_wake = anyio.Event()
            while heap and (
                heap[0][2].probe_due != heap[0][0]
                or heap[0][2].removed
                or heap[0][2].state is WorkerState.SHUTDOWN
            ):
                heapq.heappop(heap)
            if not heap:
                await self._wait(None, self._probe_wake)
                continue
            now = self._clock.now()
            due = heap[0][0]
            if due > now:
                await self._wait(due - now, self._probe_wake)
                continue
            delay = bucket.delay(now)
            if delay > 0:
                await self._clock.sleep(delay)
                continue
            _, _, record = heapq.heappop(heap)
            if record.probe_scope is not None:
                continue  # one probe at a time; the running one schedules the next
            bucket.take()
            record.probe_scope = anyio.CancelScope()
            tg.start_soon(self._probe, record, record.probe_scope)
            await anyio.lowlevel.checkpoint()

    async def _probe(self, record: _WorkerRecord, scope: anyio.CancelScope) -> None:
        started = self._clock.now()
        error: BaseException | None = None
        with scope:

            async def probe() -> None:
                nonlocal error
                try:
                    executor = self._executor_of(record)
                    await executor.execute(self._config.boot_probe_command)
                except Exception as exc:
                    error = exc

            timed_out = await self._within(self._config.timeout_probe_command, probe)
        if record.probe_scope is scope:
            record.probe_scope = None
        if scope.cancelled_caught or record.removed or record.state is WorkerState.SHUTDOWN:
            return  # the pool gave up on the worker meanwhile
        record.last_probe = self._clock.wall()
        if timed_out:
            error = TimeoutError(
                f"the probe took longer than timeout_probe_command "
                f"({self._config.timeout_probe_command} s)"
            )
        self._probe_done(record, error)
        self._schedule_probe(record, max(started + self._config.probe_interval, self._clock.now()))

    def _probe_done(self, record: _WorkerRecord, error: BaseException | None) -> None:
        now = self._clock.now()
        if error is None:
            self._metrics.probe("ok")
            record.last_ok = now
            record.failing = False
            if record.state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
                self._metrics.booted(record.itype.name, now - record.created)
                record.suspect = False
                self._set_state(record, WorkerState.IDLE, "probe ok")
                if record.idle_behavior is IdleBehavior.DRAIN:
                    self._shutdown(record, "idle behaviour drain")
                return
            if record.suspect:
                record.suspect = False
                self._refresh_leasable(record)
            self._arm(record)
            return
        if isinstance(error, HostKeyError):
            self._metrics.probe("host_key")
            self._shutdown(record, f"host key not proven: {printable(str(error))}")
            return
        self._metrics.probe("timeout" if isinstance(error, TimeoutError) else "failed")
        self._logger.debug(
            "probe of %s failed: %s",
            record.id,
            printable(str(error) or type(error).__name__),
            extra={"instance_id": record.id},
        )
        if isinstance(error, ValueError) and not record.instance.address:
            self._request_sync()  # no address yet: a listing will tell it
        if record.state in (WorkerState.BOOTING, WorkerState.UNKNOWN):
            return  # the boot deadline decides
        if record.suspect and record.state is WorkerState.IDLE:
            self._shutdown(record, "probe failed after its lease broke")
            return
        record.failing = True
        self._check(record)

    # ------------------------------------------------------------------ leases

    async def _acquire(self, itype: InstanceType, timeout: float | None) -> _WorkerRecord:
        self._check_running()
        name = itype.name
        started = self._clock.now()
        queue, idle = self._waiters[name], self._idle[name]
        if not queue and idle:
            _, record = idle.popitem(last=False)
            self._hand_out(record)
            self._metrics.lease_waited(name, 0.0)
            return record
        waiter = _Waiter()
        queue.append(waiter)
        try:
            await self._wait(timeout, waiter.event)
        except BaseException:
            self._abandon(name, waiter)
            raise
        got = waiter.record
        if got is None:
            self._abandon(name, waiter)
            if waiter.stopped:
                raise RuntimeError("the WorkerPool stopped while the lease waited")
            raise TimeoutError(f"no {name} worker became idle within {timeout} s")
        self._metrics.lease_waited(name, self._clock.now() - started)
        return got

    def _abandon(self, name: str, waiter: _Waiter) -> None:
        """A waiter gave up: leave nothing reserved for it."""
        with contextlib.suppress(ValueError):
            self._waiters[name].remove(waiter)
        record, waiter.record = waiter.record, None
        if record is not None and record.lease is not None:
            self._release(record, record.lease)

    def _release(self, record: _WorkerRecord, lease: _Lease) -> None:
        """A lease ended: the worker goes back to IDLE (or to a probe first)."""
        if lease.ended:
            return
        lease.ended = True
        if record.lease is lease:
            record.lease = None
        if record.removed or record.state is not WorkerState.RUNNING:
            return
        if lease.broken:
            record.suspect = True
        if record.idle_behavior is IdleBehavior.DRAIN:
            self._shutdown(record, "idle behaviour drain")
            return
        self._set_state(record, WorkerState.IDLE, "lease ended")
        if record.suspect and record.probe_scope is None:
            self._schedule_probe(record, self._clock.now())

    def _breaks_lease(self, exc: CloudError) -> bool:
        """Whether a CloudError from a lease's command means the worker broke."""
        return not isinstance(exc, ExecuteError)

    def _lease_broke(self, record: _WorkerRecord, lease: _Lease, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {printable(str(exc))}"
        lease.broken = True
        lease.lose(reason)
        if isinstance(exc, HostKeyError):
            self._shutdown(record, f"host key not proven: {printable(str(exc))}")

    # ------------------------------------------------------------------ creates

    def _refusal(self, itype: InstanceType) -> str | None:
        now = self._clock.now()
        if self._quota_until is not None and now < self._quota_until:
            return "quota"
        if self._create_hold_until is not None and now < self._create_hold_until:
            return "rate_limit"
        if self._shortage_for(itype) is not None:
            return "capacity"
        return None

    def _shortage_keys(self, itype: InstanceType) -> list[_ShortageKey]:
        keys: list[_ShortageKey] = [
            ("all", "", False),
            ("type", itype.provider_type, itype.preemptible),
        ]
        if any(key[0] == "group" for key in self._shortages):
            keys.append(("group", self._set.instance_quota_group(itype), False))
        return keys

    def _shortage_for(self, itype: InstanceType) -> _ShortageKey | None:
        now = self._clock.now()
        for key in self._shortage_keys(itype):
            until = self._shortages.get(key)
            if until is not None:
                if now < until:
                    return key
                del self._shortages[key]
        return None

    async def _run_create(self, create: _Create) -> None:
        async with self._create_slots:
            refused = "draining" if self._draining else self._refusal(create.itype)
            if refused is not None:
                # Learnt while this create queued: no cloud call.
                del self._creating[create.token]
                self._metrics.create(create.itype.name, refused)
                return
            await run_critical(lambda: self._create_call(create))

    async def _create_call(self, create: _Create) -> None:
        itype = create.itype
        tags = {
            **self._config.tags,
            INSTANCE_TYPE_TAG: itype.name,
            IDLE_BEHAVIOR_TAG: IdleBehavior.RUN.value,
            TOKEN_TAG: create.token,
            CREATED_TAG: create.started_wall.isoformat(),
        }
        try:
            with anyio.fail_after(CALL_LIMIT):
                instance = await self._set.create(
                    itype, self._config.image_id, tags, self._config.init_command, self._public_key
                )
        except Exception as exc:
            self._create_failed(create, exc)
            return
        self._metrics.create(itype.name, "ok")
        self._request_sync()
        self._creating.pop(create.token, None)
        if create.instance_id is not None or instance.id in self._workers:
            return  # a listing found it first
        create.instance_id = instance.id
        self._add(
            instance,
            itype,
            WorkerState.SHUTDOWN if self._draining else WorkerState.BOOTING,
            IdleBehavior.RUN,
            tags,
            boot_deadline=create.started + self._config.timeout_booting,
            reason="draining" if self._draining else "created",
            created=create.started,
        )

    def _create_failed(self, create: _Create, exc: Exception) -> None:
        name = create.itype.name
        text = printable(str(exc))
        definite = False  # the provider's answer says nothing was created
        if isinstance(exc, QuotaError):
            definite = True
            self._metrics.create(name, "quota")
            self._hold_quota(text)
        if isinstance(exc, CapacityError):
            definite = True
            self._metrics.create(name, "capacity")
            self._hold_capacity(create.itype, exc, text)
        if isinstance(exc, RateLimitError):
            definite = True
            self._metrics.create(name, "rate_limited")
            self._hold_rate_limit(exc, text)
        if definite:
            self._creating.pop(create.token, None)
            return
        self._metrics.create(name, "error")
        self._logger.warning(
            "create of a %s worker failed (the next listing tells whether it exists): %s",
            name,
            text,
            extra={"instance_type": name},
        )
        create.failed_seq = next(self._seq)
        self._request_sync()

    def _hold_quota(self, text: str) -> None:
        seconds = self._policy.quota_hold or MIN_CREATE_HOLD
        starts = not self.at_quota()
        self._quota_until = self._clock.now() + seconds
        if starts:
            self._logger.info("at quota: creates held: %s", text, extra={"hold": "quota"})
            self._publish(
                PoolEventKind.HOLD, reason=text, hold="quota", until=self._wall_in(seconds)
            )

    def _hold_capacity(self, itype: InstanceType, exc: CapacityError, text: str) -> None:
        if exc.instance_type_specific:
            key: _ShortageKey = ("type", itype.provider_type, itype.preemptible)
        elif exc.quota_group_specific:
            key = ("group", self._set.instance_quota_group(itype), False)
        else:
            key = ("all", "", False)
        seconds = self._policy.capacity_hold or MIN_CREATE_HOLD
        until = self._shortages.get(key)
        self._shortages[key] = self._clock.now() + seconds
        if until is None or until <= self._clock.now():
            self._logger.info(
                "no capacity for %s: creates of it held: %s",
                key[1] or "any type",
                text,
                extra={"hold": "capacity", "scope": key[0], "provider_type": key[1]},
            )
            self._publish(
                PoolEventKind.HOLD,
                reason=f"{key[0]} {key[1]}".strip() + f": {text}",
                hold="capacity",
                until=self._wall_in(seconds),
            )

    def _hold_rate_limit(self, exc: RateLimitError, text: str) -> None:
        seconds = max((exc.earliest_retry - self._clock.wall()).total_seconds(), MIN_CREATE_HOLD)
        starts = not self.is_held()
        until = self._clock.now() + seconds
        if self._create_hold_until is None or until > self._create_hold_until:
            self._create_hold_until = until
        if starts:
            self._publish(
                PoolEventKind.HOLD, reason=text, hold="rate_limit", until=self._wall_in(seconds)
            )

    # ------------------------------------------------------------------ destroys

    def _start_destroy(self, record: _WorkerRecord) -> None:
        if record.destroying or record.removed or self._tg is None:
            return
        record.destroying = True
        self._tg.start_soon(self._destroy, record)

    async def _destroy(self, record: _WorkerRecord) -> None:
        outcome = "error"
        try:
            with anyio.fail_after(CALL_LIMIT):
                await record.instance.destroy()
            outcome = "ok"
        except Exception as exc:
            self._logger.info(
                "destroying %s failed (retried in %s s): %s",
                record.id,
                self._config.timeout_shutdown,
                printable(str(exc)),
                extra={"instance_id": record.id},
            )
        finally:
            record.destroying = False
            record.next_destroy_at = self._clock.now() + self._config.timeout_shutdown
            self._metrics.destroy(outcome)
            if outcome == "ok" and self._quota_until is not None:
                was = self.at_quota()
                self._quota_until = None
                if was:
                    self._publish(PoolEventKind.HOLD_ENDED, hold="quota", reason="destroyed")
            self._arm(record)
            self._request_sync()

    # ------------------------------------------------------------------ listing

    def _request_sync(self) -> None:
        self._sync_wanted.set()

    async def _sync_loop(self) -> None:
        while True:
            self._sync_wanted = anyio.Event()
            last = self._last_sync_at if self._last_sync_at is not None else -math.inf
            await self._wait(
                last + self._config.sync_interval - self._clock.now(), self._sync_wanted
            )
            gap = last + MIN_SYNC_GAP - self._clock.now()
            if gap > 0:
                await self._clock.sleep(gap)
            retry_at = await self._sync_once()
            if retry_at is not None:
                await self._clock.sleep(retry_at)

    async def _sync_once(self) -> float | None:
        """List the set and reconcile. Returns None, or the seconds to wait
        before trying again after a failed listing."""
        seq = next(self._seq)
        started = self._clock.now()
        try:
            with anyio.fail_after(CALL_LIMIT):
                listed = await self._set.instances()
        except (CloudError, OSError, TimeoutError) as exc:
            self._logger.warning("listing the instance set failed: %s", printable(str(exc)))
            if isinstance(exc, RateLimitError):
                return max((exc.earliest_retry - self._clock.wall()).total_seconds(), MIN_SYNC_GAP)
            return min(self._config.sync_interval, self._config.timeout_shutdown)
        self._last_sync_at = started
        self._apply_listing(listed, seq)
        self._last_sync_seq = seq
        self._last_sync_empty = not listed
        synced, self._synced = self._synced, anyio.Event()
        synced.set()
        return None

    def _apply_listing(self, listed: list[Instance], seq: int) -> None:
        seen: dict[InstanceID, Instance] = {}
        for instance in listed:
            seen.setdefault(instance.id, instance)
        now = self._clock.now()
        for id, instance in seen.items():
            record = self._workers.get(id)
            if record is not None:
                record.instance = instance
                record.target.instance = instance
                continue
            self._adopt(instance)
        for record in list(self._workers.values()):
            if record.id not in seen and record.added_seq < seq:
                vanished = record.state is not WorkerState.SHUTDOWN
                self._remove(record, "vanished from listings" if vanished else "destroyed")
        for token, create in list(self._creating.items()):
            if create.failed_seq is not None and create.failed_seq < seq:
                del self._creating[token]  # the listing shows no instance for it
        for id, when in list(self._tombstones.items()):
            if now - when > TOMBSTONE_SECONDS:
                del self._tombstones[id]

    def _adopt(self, instance: Instance) -> None:
        tags = instance.tags
        cfg = self._config
        token = tags.get(TOKEN_TAG)
        create = self._creating.get(token) if token is not None else None
        if create is not None and create.instance_id is None:
            # Our create's instance, seen before (or instead of) the create's answer.
            create.instance_id = instance.id
            if create.failed_seq is not None:
                del self._creating[create.token]
            self._add(
                instance,
                create.itype,
                WorkerState.SHUTDOWN if self._draining else WorkerState.BOOTING,
                IdleBehavior.RUN,
                tags,
                boot_deadline=create.started + cfg.timeout_booting,
                reason="created (found by listing)",
                created=create.started,
            )
            return
        name = tags.get(INSTANCE_TYPE_TAG, "")
        itype = self._types.get(name)
        try:
            behavior = IdleBehavior(tags.get(IDLE_BEHAVIOR_TAG, IdleBehavior.RUN.value))
        except ValueError:
            behavior = IdleBehavior.RUN
        now = self._clock.now()
        age = 0.0
        created_text = tags.get(CREATED_TAG)
        if created_text is not None:
            with contextlib.suppress(ValueError, TypeError):
                created_at = datetime.fromisoformat(created_text)
                age = max((self._clock.wall() - created_at).total_seconds(), 0.0)
        reason, state = "adopted", WorkerState.UNKNOWN
        if itype is None:
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
        elif self._draining:
            reason, state = "adopted while draining", WorkerState.SHUTDOWN
        # A young instance gets what is left of timeout_booting; an older one
        # (an earlier pool's worker, say) is judged like a worker whose probes
        # fail: timeout_probe from now. Either way at least one probe's time.
        if age < cfg.timeout_booting:
            boot_deadline = now - age + cfg.timeout_booting
        else:
            boot_deadline = now + cfg.timeout_probe
        boot_deadline = max(boot_deadline, now + cfg.timeout_probe_command)
        self._add(
            instance,
            itype,
            state,
            behavior,
            tags,
            boot_deadline=boot_deadline,
            reason=reason,
            created=now - age,
        )
