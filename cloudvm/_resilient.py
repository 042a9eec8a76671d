"""``cloudvm.resilient``: wrap any InstanceSet so that it behaves well under throttling,
quota and capacity errors.

Calls are sorted into three kinds, each with its own hold-off:

======== ==============================================================
kind     calls
======== ==============================================================
create   ``InstanceSet.create``
list     ``InstanceSet.instances``
other    ``set_tags`` and ``destroy`` on instances the wrapper returned
======== ==============================================================

What the wrapper does with each error of the wrapped set:

- ``RateLimitError``: every call of that kind is held off until the error's
  ``earliest_retry`` (at least :data:`MIN_HOLD_OFF` seconds): no call of the kind
  reaches the cloud meanwhile. Callers that arrive during the hold-off wait and then
  proceed, each after a random jitter. The caller whose call got the error sees it
  (re-raised unchanged) unless ``retry_rate_limited`` is set; a dispatcher wants a
  throttled ``create`` to raise so that it can decide what to do next.
- ``QuotaError``: never retried. Until an instance is destroyed through the wrapper
  or ``quota_hold`` passes, creates fail fast with a new QuotaError (no cloud call).
- ``CapacityError``: remembered for ``capacity_hold`` per instance type, per quota
  group or for every type (see :class:`ResiliencePolicy`); creates that would meet a
  remembered shortage fail fast with a new CapacityError (no cloud call).

Calls of each kind also pass an adaptive admission window (``adaptive_concurrency``,
on by default), in the manner of TCP's slow start: at most ``window`` calls of the
kind are in flight at once, others queue in order. The window starts at
``initial_window`` calls; each success while the window holds callers back adds one
call, so it doubles every round trip, up to ``max_window`` (for creates also
``max_concurrent_creates``); after a RateLimitError it doubles only up to half the
window it had then (at least two calls), and beyond that grows by one call per
window's worth of successes. A RateLimitError shrinks the window to one call:
when the hold-off ends, one probe call goes alone and the others follow only when
it succeeds; if the probe is throttled, a new hold-off starts and nobody else was
sent. So many callers that arrive at once do not all reach a throttled API before
its first RateLimitError is known. Calls in flight when the window shrank neither
grow nor shrink it again. A wait for the window counts towards ``max_wait``; a call
that gives up, is cancelled or fails in any way frees its place. The window is not
logged.

Each decision is logged once, when it is taken, to the logger given, with its
fields in ``extra=`` (``kind``, ``decision``, ``until``, ``error_code``, ...), and
counted in ``cloudvm_resilient_decisions_total{kind, decision}`` when a prometheus
registry is given. Decisions: ``hold_off_started``, ``hold_off_extended`` (logged
at DEBUG), ``at_quota``, ``quota_cleared``, ``capacity_remembered``,
``fail_fast_quota`` and ``fail_fast_capacity`` (logged for the first refusal of
each episode, counted for every refusal), and, counted only because each concerns
one caller, ``gave_up`` (a wait would exceed ``max_wait``) and ``retried``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import random
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import asyncssh

from ._base import InstanceSetBase
from ._delegating import DelegatingInstance
from ._errors import CapacityError, CloudError, QuotaError, RateLimitError
from ._metrics import import_prometheus
from ._protocols import Instance, InstanceSet
from ._types import (
    ImageID,
    InitCommand,
    InstanceQuotaGroup,
    InstanceTags,
    InstanceType,
)

if TYPE_CHECKING:  # prometheus_client is optional
    import prometheus_client

__all__ = [
    "MIN_HOLD_OFF",
    "ResiliencePolicy",
    "ResilientInstance",
    "ResilientInstanceSet",
    "resilient",
]

#: The shortest hold-off in seconds after a RateLimitError, even when the error's
#: ``earliest_retry`` is sooner (or already past): a throttled API is never hammered.
MIN_HOLD_OFF = 1.0

_Kind = Literal["create", "list", "other"]
_KINDS: tuple[_Kind, ...] = ("create", "list", "other")
_T = TypeVar("_T")
# ("type", provider_type, preemptible) | ("group", quota group, False) | ("all", "", False)
_ShortageKey = tuple[str, str, bool]


# --------------------------------------------------------------------------- policy


def _field_error(name: str, expected: str, value: object) -> str:
    return f"ResiliencePolicy.{name} must be {expected}, got {value!r}"


def _check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(_field_error(name, "a number of seconds", value))
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "a finite number greater than 0" if positive else "a finite number >= 0"
        raise ValueError(_field_error(name, expected, value))


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(_field_error(name, "an int", value))
    if value < 1:
        raise ValueError(_field_error(name, "at least 1", value))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResiliencePolicy:
    """How :func:`resilient` waits, retries and remembers errors. A value object.

    Every field is keyword-only and checked at construction: a wrong type raises
    TypeError, a value out of range ValueError, both naming the field. Times are
    seconds.

    ====================== ==========================================================
    Field                  Meaning
    ====================== ==========================================================
    retry_rate_limited     False (default): the caller whose call got a
                           RateLimitError sees it; True: that caller waits out the
                           hold-off like everyone else and retries (within
                           ``max_wait``). A retried ``create`` may duplicate an
                           instance if the provider created one despite the error.
    max_wait               The longest a call waits in the wrapper for hold-offs and
                           the rate cap, from its start (default 120). A call that
                           would wait longer raises RateLimitError at once. 0 means
                           never wait.
    jitter                 Each waiter wakes at a uniformly random moment up to this
                           long after a hold-off ends (default 0.5), so that waiters
                           do not hit the cloud all at once.
    capacity_hold          How long a CapacityError is remembered (default 180, as
                           Karpenter's 3 minutes). 0 disables the memory.
    quota_hold             How long creates are refused after a QuotaError unless an
                           instance is destroyed through the wrapper first (default
                           60, as Arvados' one minute). 0 disables it.
    max_concurrent_creates At most this many ``create`` calls run at once; others
                           queue (not bounded by ``max_wait``). None: no limit.
    max_calls_per_second   A token bucket over every call that reaches the cloud,
                           of all kinds. None (default): no cap.
    max_calls_burst        The bucket's size: how many calls may go at once after a
                           quiet spell (default 1).
    adaptive_concurrency   True (default): at most a window of calls of each kind is
                           in flight at once; the window grows while calls succeed
                           and shrinks to one call on a RateLimitError (see the
                           module documentation). False: no window, every caller
                           goes as soon as hold-offs and the rate cap allow.
    initial_window         The window each kind starts with (default 2).
    max_window             The largest the window grows. None (default): no limit
                           but ``max_concurrent_creates`` for creates.
    ====================== ==========================================================
    """

    retry_rate_limited: bool = False
    max_wait: float = 120.0
    jitter: float = 0.5
    capacity_hold: float = 180.0
    quota_hold: float = 60.0
    max_concurrent_creates: int | None = None
    max_calls_per_second: float | None = None
    max_calls_burst: int = 1
    adaptive_concurrency: bool = True
    initial_window: int = 2
    max_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("retry_rate_limited", "adaptive_concurrency"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(_field_error(name, "a bool", getattr(self, name)))
        for name in ("max_wait", "jitter", "capacity_hold", "quota_hold"):
            _check_seconds(name, getattr(self, name))
        if self.max_concurrent_creates is not None:
            _check_count("max_concurrent_creates", self.max_concurrent_creates)
        if self.max_calls_per_second is not None:
            _check_seconds("max_calls_per_second", self.max_calls_per_second, positive=True)
        _check_count("max_calls_burst", self.max_calls_burst)
        _check_count("initial_window", self.initial_window)
        if self.max_window is not None:
            _check_count("max_window", self.max_window)
            if self.initial_window > self.max_window:
                raise ValueError(
                    _field_error(
                        "initial_window",
                        f"at most max_window ({self.max_window})",
                        self.initial_window,
                    )
                )


# --------------------------------------------------------------------------- metrics

# One counter per registry: a registry refuses a second collector of one name,
# and several wrappers may share a registry (the pattern of _metrics.py).
_counters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _decision_counter(registry: prometheus_client.CollectorRegistry) -> Any:
    try:
        return _counters[registry]
    except KeyError:
        pass
    prometheus_client = import_prometheus()
    counter = prometheus_client.Counter(
        "cloudvm_resilient_decisions",
        "Decisions taken by cloudvm.resilient, by call kind and decision.",
        ["kind", "decision"],
        registry=registry,
    )
    _counters[registry] = counter
    return counter


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class _HoldOff:
    """The hold-off of one kind of call."""

    until: datetime | None = None  # no call of the kind reaches the cloud before this
    cause: RateLimitError | None = None


@dataclasses.dataclass
class _Shortage:
    """A remembered CapacityError."""

    until: datetime
    cause: CapacityError
    scope: str  # for messages: "instance type m5.large", "quota group standard", ...
    refusal_logged: bool = False


class _TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; a call takes one.

    Callers may take a token the bucket does not have yet (the balance goes
    negative) and then wait :meth:`delay` seconds: that queues them in order.
    """

    def __init__(self, rate: float, burst: int, now: datetime) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: datetime) -> None:
        elapsed = (now - self._stamp).total_seconds()
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now

    def delay(self, now: datetime) -> float:
        """Seconds from ``now`` until the next token is there (0 if it is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self) -> None:
        self._tokens -= 1

    def refund(self, now: datetime) -> None:
        """Give back a token taken by a caller that was cancelled while waiting."""
        self._refill(now)
        self._tokens = min(self._burst, self._tokens + 1)


class _Ticket:
    """One call's place in a :class:`_Window`: queued until ``event`` is set, then
    admitted (counted in flight) in window ``generation``."""

    __slots__ = ("event", "generation")

    def __init__(self, generation: int, event: anyio.Event | None = None) -> None:
        self.generation = generation
        self.event = event


_Outcome = Literal["ok", "throttled", "other"]


class _Window:
    """The adaptive admission window of one kind of call, as TCP's congestion window.

    At most ``size`` calls are in flight. A success grows the window by one call
    (so it doubles every round of successes) until ``threshold``, then by one call
    per window's worth of successes; it grows only while it limits the callers.
    A RateLimitError halves the threshold and shrinks the window to one call: the
    next call admitted is a probe, and nobody follows it until it succeeds.
    Calls admitted before that (an older ``generation``) neither grow nor shrink
    the window again. Every method is synchronous: a caller cancelled anywhere
    leaves the counts right.
    """

    def __init__(self, size: int, cap: int | None) -> None:
        self.size = size if cap is None else min(size, cap)
        self.cap = cap
        self.threshold: int | None = None  # slow start below it; None: not yet known
        self.in_flight = 0
        self.generation = 0
        self._credit = 0  # successes towards the next +1 above the threshold
        self._queue: collections.deque[_Ticket] = collections.deque()

    def try_admit(self) -> _Ticket | None:
        """Admit a call at once if there is room and nobody queues before it."""
        if self._queue or self.in_flight >= self.size:
            return None
        self.in_flight += 1
        return _Ticket(self.generation)

    def enqueue(self) -> _Ticket:
        ticket = _Ticket(self.generation, anyio.Event())
        self._queue.append(ticket)
        return ticket

    @staticmethod
    def admitted(ticket: _Ticket) -> bool:
        return ticket.event is None or ticket.event.is_set()

    def abandon(self, ticket: _Ticket) -> None:
        """A queued caller gives up: leave the queue, or free the slot it was given."""
        if self.admitted(ticket):
            self.release(ticket, "other")
        else:
            self._queue.remove(ticket)

    def release(self, ticket: _Ticket, outcome: _Outcome) -> None:
        """An admitted call is over: adapt the window to how it went, admit the next."""
        limited = self.in_flight >= self.size or bool(self._queue)
        self.in_flight -= 1
        if ticket.generation == self.generation:
            if outcome == "ok" and limited:
                self._grow()
            elif outcome == "throttled":
                self.threshold = max(self.size // 2, 2)
                self.size = 1
                self._credit = 0
                self.generation += 1
        while self._queue and self.in_flight < self.size:
            waiter = self._queue.popleft()
            waiter.generation = self.generation
            self.in_flight += 1
            assert waiter.event is not None
            waiter.event.set()

    def _grow(self) -> None:
        if self.threshold is None or self.size < self.threshold:
            self.size += 1
        else:
            self._credit += 1
            if self._credit >= self.size:
                self._credit = 0
                self.size += 1
        if self.cap is not None:
            self.size = min(self.size, self.cap)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- the wrapper


class ResilientInstanceSet(InstanceSetBase):
    """An InstanceSet that wraps another one with the behaviour of :func:`resilient`.

    Made by :func:`resilient`; see the module documentation for the contract. Safe
    to call concurrently from many tasks; cancelling a caller at any await point
    leaves the wrapper consistent, because every decision is recorded synchronously
    before the wrapper awaits anything. :meth:`stop` stops the wrapped set.
    """

    def __init__(
        self,
        wrapped: InstanceSet,
        policy: ResiliencePolicy,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]],
        rng: Callable[[], float],
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._policy = policy
        self._logger = logger
        self._counter = None if registry is None else _decision_counter(registry)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._holds: dict[_Kind, _HoldOff] = {kind: _HoldOff() for kind in _KINDS}
        self._bucket = (
            None
            if policy.max_calls_per_second is None
            else _TokenBucket(policy.max_calls_per_second, policy.max_calls_burst, clock())
        )
        self._create_slots: contextlib.AbstractAsyncContextManager[Any] = (
            contextlib.nullcontext()
            if policy.max_concurrent_creates is None
            else anyio.Semaphore(policy.max_concurrent_creates)
        )
        self._windows: dict[_Kind, _Window] = {}
        if policy.adaptive_concurrency:
            for kind in _KINDS:
                cap = policy.max_window
                if kind == "create" and policy.max_concurrent_creates is not None:
                    cap = min(cap or policy.max_concurrent_creates, policy.max_concurrent_creates)
                self._windows[kind] = _Window(policy.initial_window, cap)
        # At quota until this time, unless an instance is destroyed first.
        self._quota_until: datetime | None = None
        self._quota_cause: QuotaError | None = None
        self._quota_refusal_logged = False
        # Successful destroys through the wrapper. A QuotaError from a create that
        # overlapped a destroy says nothing about the quota after that destroy.
        self._destroys = 0
        self._shortages: dict[_ShortageKey, _Shortage] = {}

    @property
    def policy(self) -> ResiliencePolicy:
        """The policy in force."""
        return self._policy

    @property
    def wrapped(self) -> InstanceSet:
        """The InstanceSet this one wraps."""
        return self._wrapped

    # ---- the InstanceSet interface

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Create an instance through the wrapped set; see
        :meth:`cloudvm.InstanceSet.create` for the arguments.

        Step by step: refuse at once if at quota or if a remembered shortage
        covers ``itype``; wait for one of ``max_concurrent_creates`` slots; wait
        out any create hold-off, then for a place in the create window and for
        the rate cap (all three at most ``max_wait``); check
        quota and shortages again (another caller may have learnt something
        meanwhile); then call the wrapped set once (more often only with
        ``retry_rate_limited``).

        Returns the new instance, wrapped (a :class:`ResilientInstance`).

        Raises:
            QuotaError: a new one, without a cloud call, while at quota; or the
                wrapped set's own (which starts the at-quota state).
            CapacityError: a new one carrying the remembered error's flags and
                code (chained from it), without a cloud call; or the wrapped
                set's own (which is remembered).
            RateLimitError: the wrapped set's own (which starts a hold-off), or
                a new one when waiting would take longer than ``max_wait``.
            RuntimeError: the set was stopped.
        """
        self._check_open()
        self._refuse_create(itype)
        async with self._create_slots:

            async def attempt() -> Instance:
                destroys = self._destroys
                try:
                    instance = await self._wrapped.create(
                        itype, image_id, tags, init_command, public_key
                    )
                except CloudError as exc:
                    self._note_create_error(itype, exc, destroys)
                    raise
                return ResilientInstance(self, instance)

            return await self._call("create", attempt, lambda: self._refuse_create(itype))

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """The wrapped set's listing, each instance wrapped in a :class:`ResilientInstance`.

        Waits out any list hold-off, the list window and the rate cap (at most
        ``max_wait``).

        Raises:
            RateLimitError: the wrapped set's own (which starts a list hold-off),
                or a new one when waiting would take longer than ``max_wait``.
            RuntimeError: the set was stopped.
        """
        self._check_open()
        found = await self._call("list", lambda: self._wrapped.instances(tags))
        return [ResilientInstance(self, instance) for instance in found]

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """The wrapped set's answer, unchanged."""
        return self._wrapped.instance_quota_group(itype)

    async def _stop(self) -> None:
        await self._wrapped.stop()

    def __repr__(self) -> str:
        return f"<ResilientInstanceSet wrapping {self._wrapped!r} {self._policy!r}>"

    # ---- one call, start to end

    async def _call(
        self,
        kind: _Kind,
        attempt: Callable[[], Awaitable[_T]],
        refuse: Callable[[], None] | None = None,
    ) -> _T:
        """Wait for our turn, then run ``attempt``; on a RateLimitError hold the
        kind off and re-raise, or (``retry_rate_limited``) wait and try again."""
        deadline = self._clock() + timedelta(seconds=self._policy.max_wait)
        while True:
            ticket = await self._wait_turn(kind, deadline)
            try:
                # Nothing here awaits before the cloud call: the checks still hold then.
                self._check_open()
                if refuse is not None:
                    refuse()
                result = await attempt()
            except RateLimitError as exc:
                # Hold off first, so that the slot given back admits nobody early.
                self._note_rate_limit(kind, exc)
                self._release(kind, ticket, "throttled")
                # Quota and capacity are never retried, whatever else the error means.
                if not self._policy.retry_rate_limited or isinstance(
                    exc, QuotaError | CapacityError
                ):
                    raise
                until = self._holds[kind].until
                if until is not None and until > deadline:
                    self._count(kind, "gave_up")
                    raise
                self._count(kind, "retried")
            except BaseException:
                self._release(kind, ticket, "other")
                raise
            else:
                self._release(kind, ticket, "ok")
                return result

    def _release(self, kind: _Kind, ticket: _Ticket | None, outcome: _Outcome) -> None:
        if ticket is not None:
            self._windows[kind].release(ticket, outcome)

    async def _wait_turn(self, kind: _Kind, deadline: datetime) -> _Ticket | None:
        """Return when no hold-off of ``kind`` is on, the kind's window has
        admitted us and a rate-cap token is ours. The ticket returned (None
        without ``adaptive_concurrency``) must be released after the call."""
        while True:
            await self._wait_hold_off(kind, deadline)
            ticket = await self._admit(kind, deadline)
            try:
                ready = not self._is_held_off(kind, self._clock()) and (
                    await self._take_rate_token(kind, deadline)
                )
            except BaseException:
                self._release(kind, ticket, "other")
                raise
            if ready:
                return ticket
            # A hold-off began while we waited for a slot or a token: wait it out.
            self._release(kind, ticket, "other")

    async def _admit(self, kind: _Kind, deadline: datetime) -> _Ticket | None:
        """Wait (at most until ``deadline``) for room in the kind's window."""
        window = self._windows.get(kind)
        if window is None:
            return None
        ticket = window.try_admit()
        if ticket is not None:
            return ticket  # no await since the hold-off check: it still holds
        now = self._clock()
        ticket = window.enqueue()
        try:
            if now < deadline:
                await self._wait_set(ticket, (deadline - now).total_seconds())
        except BaseException:
            window.abandon(ticket)
            raise
        if window.admitted(ticket):
            return ticket
        window.abandon(ticket)
        self._count(kind, "gave_up")
        raise RateLimitError(
            f"cloudvm.resilient: {window.in_flight} {kind} calls are in flight, the most "
            f"the adaptive window allows now; waiting for a slot would take longer than "
            f"max_wait={self._policy.max_wait}s; retry later",
            self._clock(),
        )

    async def _wait_set(self, ticket: _Ticket, seconds: float) -> None:
        """Wait until ``ticket`` is admitted or ``seconds`` pass on our clock."""
        assert ticket.event is not None
        async with anyio.create_task_group() as tg:

            async def alarm() -> None:
                await self._sleep(seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(alarm)
            await ticket.event.wait()
            tg.cancel_scope.cancel()

    async def _take_rate_token(self, kind: _Kind, deadline: datetime) -> bool:
        """Take a rate-cap token, waiting for it (at most until ``deadline``).
        False if a hold-off of ``kind`` began meanwhile."""
        if self._bucket is None:
            return True
        now = self._clock()
        delay = self._bucket.delay(now)
        if now + timedelta(seconds=delay) > deadline:
            self._count(kind, "gave_up")
            raise RateLimitError(
                f"cloudvm.resilient: the rate cap of {self._policy.max_calls_per_second} "
                f"calls per second would delay this {kind} call longer than "
                f"max_wait={self._policy.max_wait}s; retry later",
                now + timedelta(seconds=delay),
            )
        self._bucket.take()
        if delay <= 0:
            return True  # no await since the hold-off check: it still holds
        try:
            await self._sleep(delay)
        except BaseException:
            self._bucket.refund(self._clock())
            raise
        return not self._is_held_off(kind, self._clock())

    def _is_held_off(self, kind: _Kind, now: datetime) -> bool:
        until = self._holds[kind].until
        return until is not None and now < until

    async def _wait_hold_off(self, kind: _Kind, deadline: datetime) -> None:
        hold = self._holds[kind]
        while True:
            now = self._clock()
            if hold.until is None or now >= hold.until:
                return
            if hold.until > deadline:
                self._count(kind, "gave_up")
                raise RateLimitError(
                    f"cloudvm.resilient: {kind} calls are held off until "
                    f"{hold.until.isoformat()}, longer than max_wait={self._policy.max_wait}s",
                    hold.until,
                    code=None if hold.cause is None else hold.cause.code,
                ) from hold.cause
            # Re-check after waking: the hold-off may have been extended meanwhile.
            delay = (hold.until - now).total_seconds() + self._policy.jitter * self._rng()
            await self._sleep(min(delay, (deadline - now).total_seconds()))

    # ---- bookkeeping: synchronous, so a cancellation cannot leave it half done

    def _note_rate_limit(self, kind: _Kind, exc: RateLimitError) -> None:
        now = self._clock()
        until = max(exc.earliest_retry, now + timedelta(seconds=MIN_HOLD_OFF))
        hold = self._holds[kind]
        if hold.until is None or hold.until <= now:
            decision, level = "hold_off_started", logging.INFO
        elif until > hold.until:
            # Calls that were in flight when the hold-off began report it again.
            decision, level = "hold_off_extended", logging.DEBUG
        else:
            return
        hold.until, hold.cause = until, exc
        self._decide(
            level,
            kind,
            decision,
            "%s calls held off until %s: %s",
            kind,
            until.isoformat(),
            exc,
            until=until.isoformat(),
            error_code=exc.code,
        )

    def _note_create_error(self, itype: InstanceType, exc: CloudError, destroys: int) -> None:
        now = self._clock()
        policy = self._policy
        if isinstance(exc, QuotaError) and policy.quota_hold > 0 and destroys == self._destroys:
            starts = self._quota_until is None or self._quota_until <= now
            self._quota_until = now + timedelta(seconds=policy.quota_hold)
            self._quota_cause = exc
            if starts:
                self._quota_refusal_logged = False
                self._decide(
                    logging.INFO,
                    "create",
                    "at_quota",
                    "at quota: refusing creates until an instance is destroyed or until %s: %s",
                    self._quota_until.isoformat(),
                    exc,
                    until=self._quota_until.isoformat(),
                    error_code=exc.code,
                )
        if isinstance(exc, CapacityError) and policy.capacity_hold > 0:
            key, scope = self._shortage_of(itype, exc)
            until = now + timedelta(seconds=policy.capacity_hold)
            known = self._shortages.get(key)
            if known is not None and known.until > now:
                known.until, known.cause = until, exc
                return
            self._shortages[key] = _Shortage(until, exc, scope)
            self._decide(
                logging.INFO,
                "create",
                "capacity_remembered",
                "no capacity for %s: refusing such creates until %s: %s",
                scope,
                until.isoformat(),
                exc,
                until=until.isoformat(),
                error_code=exc.code,
                scope=scope,
                instance_type=itype.provider_type,
            )

    def _shortage_of(self, itype: InstanceType, exc: CapacityError) -> tuple[_ShortageKey, str]:
        # The most specific flag wins, as in Arvados: a type-specific error says
        # nothing about the rest of the type's quota group.
        if exc.instance_type_specific:
            return _type_shortage(itype)
        if exc.quota_group_specific:
            group = self._wrapped.instance_quota_group(itype)
            return ("group", group, False), f"quota group {group}"
        return ("all", "", False), "every instance type"

    def _note_destroyed(self) -> None:
        self._destroys += 1
        now = self._clock()
        was_at_quota = self._quota_until is not None and now < self._quota_until
        self._quota_until = self._quota_cause = None
        if was_at_quota:
            self._decide(
                logging.INFO,
                "other",
                "quota_cleared",
                "an instance was destroyed: creates are allowed again",
            )

    def _refuse_create(self, itype: InstanceType) -> None:
        """Raise at once if a create of ``itype`` would meet what we remember."""
        now = self._clock()
        if self._quota_until is not None and self._quota_cause is not None:
            if now < self._quota_until:
                self._count("create", "fail_fast_quota")
                if not self._quota_refusal_logged:
                    self._quota_refusal_logged = True
                    self._log(
                        logging.INFO,
                        "create",
                        "fail_fast_quota",
                        "refusing creates without a cloud call: at quota until %s",
                        self._quota_until.isoformat(),
                        until=self._quota_until.isoformat(),
                    )
                quota_cause = self._quota_cause
                raise QuotaError(
                    f"cloudvm.resilient: at quota ({quota_cause}); destroy an instance or retry "
                    f"after {self._quota_until.isoformat()}",
                    code=quota_cause.code,
                ) from quota_cause
            self._quota_until = self._quota_cause = None
        for key in self._shortage_keys(itype):
            shortage = self._shortages.get(key)
            if shortage is None:
                continue
            if now >= shortage.until:
                del self._shortages[key]
                continue
            self._count("create", "fail_fast_capacity")
            if not shortage.refusal_logged:
                shortage.refusal_logged = True
                self._log(
                    logging.INFO,
                    "create",
                    "fail_fast_capacity",
                    "refusing creates for %s without a cloud call until %s",
                    shortage.scope,
                    shortage.until.isoformat(),
                    until=shortage.until.isoformat(),
                    scope=shortage.scope,
                    instance_type=itype.provider_type,
                )
            cause = shortage.cause
            raise CapacityError(
                f"cloudvm.resilient: no capacity for {shortage.scope} ({cause}); "
                f"retry after {shortage.until.isoformat()} or try another type",
                instance_type_specific=cause.instance_type_specific,
                quota_group_specific=cause.quota_group_specific,
                code=cause.code,
            ) from cause

    def _shortage_keys(self, itype: InstanceType) -> list[_ShortageKey]:
        keys: list[_ShortageKey] = [("all", "", False), _type_shortage(itype)[0]]
        # Ask the driver for the quota group only when a group shortage is known.
        if any(key[0] == "group" for key in self._shortages):
            keys.append(("group", self._wrapped.instance_quota_group(itype), False))
        return keys

    # ---- logging and metrics

    def _count(self, kind: _Kind, decision: str) -> None:
        if self._counter is not None:
            self._counter.labels(kind, decision).inc()

    def _log(
        self, level: int, kind: _Kind, decision: str, message: str, *args: object, **fields: Any
    ) -> None:
        self._logger.log(
            level, message, *args, extra={"kind": kind, "decision": decision, **fields}
        )

    def _decide(
        self, level: int, kind: _Kind, decision: str, message: str, *args: object, **fields: Any
    ) -> None:
        self._count(kind, decision)
        self._log(level, kind, decision, message, *args, **fields)


def _type_shortage(itype: InstanceType) -> tuple[_ShortageKey, str]:
    # Capacity belongs to the provider's type, whatever the caller names it;
    # spot and on-demand capacity are separate pools.
    scope = f"instance type {itype.provider_type}" + (" (preemptible)" if itype.preemptible else "")
    return ("type", itype.provider_type, itype.preemptible), scope


class ResilientInstance(DelegatingInstance):
    """An instance returned by a :class:`ResilientInstanceSet`.

    ``set_tags`` and ``destroy`` go through the wrapper's "other" hold-off and
    rate cap; a successful ``destroy`` ends the wrapper's at-quota state. Every
    other attribute and method (``verify_host_key`` included) is the wrapped
    instance's, unchanged. Safe to use concurrently.
    """

    def __init__(self, owner: ResilientInstanceSet, wrapped: Instance) -> None:
        super().__init__(wrapped)
        self._owner = owner

    async def set_tags(self, tags: InstanceTags) -> None:
        """The wrapped instance's ``set_tags``, after any "other" hold-off.

        Raises RateLimitError as :meth:`ResilientInstanceSet.instances` does, and
        whatever the wrapped instance raises.
        """
        self._owner._check_open()
        await self._owner._call("other", lambda: self._wrapped.set_tags(tags))

    async def destroy(self) -> None:
        """The wrapped instance's ``destroy``, after any "other" hold-off. On
        success, creates are no longer refused for being at quota.

        Raises RateLimitError as :meth:`ResilientInstanceSet.instances` does, and
        whatever the wrapped instance raises.
        """
        self._owner._check_open()
        await self._owner._call("other", self._wrapped.destroy)
        self._owner._note_destroyed()


def resilient(
    instance_set: InstanceSet,
    *,
    policy: ResiliencePolicy | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    registry: prometheus_client.CollectorRegistry | None = None,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    rng: Callable[[], float] | None = None,
    **policy_fields: Any,
) -> InstanceSet:
    """Wrap ``instance_set`` so that throttling, quota and capacity errors are
    handled once, here, instead of in every dispatcher.

    The result is an InstanceSet (a :class:`ResilientInstanceSet`) whose
    behaviour the module documentation describes: hold-offs per kind of call
    after a RateLimitError, fail-fast creates while at quota or short of
    capacity, an optional rate cap and create concurrency limit. Instances it
    returns are wrapped (:class:`ResilientInstance`). Its ``stop()`` (and its
    ``async with`` exit) stops ``instance_set``. Nothing is started: the wrapper
    owns no background task.

    Parameters:
        instance_set: the set to wrap; any InstanceSet, a wrapper included.
        policy: the base policy; None means ``ResiliencePolicy()``.
        logger: receives one record per decision; None means
            ``logging.getLogger("cloudvm.resilient")``.
        registry: when given, decisions are counted there; None counts nothing.
        clock: returns the current time, UTC and aware; None means the system
            clock. ``earliest_retry`` and every hold are measured on it.
        sleep: waits that many seconds; None means ``anyio.sleep``. Together with
            ``clock``, the seam that lets tests run without waiting.
        rng: returns a float in [0, 1) to scale the jitter; None means
            ``random.random``.
        **policy_fields: any :class:`ResiliencePolicy` field, overriding
            ``policy``'s.

    Returns:
        The wrapping InstanceSet.

    Raises:
        TypeError: ``instance_set`` is not an InstanceSet, a keyword is not a
            policy field, or a field has the wrong type (named).
        ValueError: a policy field is out of range (named).
    """
    if not isinstance(instance_set, InstanceSet):
        raise TypeError(f"resilient() wraps an InstanceSet, not {type(instance_set).__name__}")
    known = {field.name for field in dataclasses.fields(ResiliencePolicy)}
    unknown = sorted(set(policy_fields) - known)
    if unknown:
        raise TypeError(
            f"resilient() got unknown policy field(s) {', '.join(map(repr, unknown))}; "
            f"the fields are {', '.join(sorted(known))}"
        )
    if policy is None:
        policy = ResiliencePolicy(**policy_fields)
    elif not isinstance(policy, ResiliencePolicy):
        raise TypeError(f"policy must be a ResiliencePolicy, not {type(policy).__name__}")
    elif policy_fields:
        policy = dataclasses.replace(policy, **policy_fields)
    return ResilientInstanceSet(
        instance_set,
        policy,
        logger=logging.getLogger("cloudvm.resilient") if logger is None else logger,
        registry=registry,
        clock=_utc_now if clock is None else clock,
        sleep=anyio.sleep if sleep is None else sleep,
        rng=random.random if rng is None else rng,
    )
