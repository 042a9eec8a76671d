"""The fake cloud's state: instances, indexes, buckets, quotas and faults.

A :class:`FakeCloud` is one "account": every InstanceSet of the ``fake`` driver
lives in one, and sets share its instances, quotas and rate limits exactly as
sets on one real account would. Everything is in memory and each call's
decision is made synchronously, between awaits, so concurrent callers never
see half-updated state.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.lowlevel
import asyncssh

from .._critical import run_critical
from .._drivers import driver_func
from .._errors import CapacityError, CloudError, ConfigError, QuotaError, RateLimitError
from .._imds import IMDSv2Service
from .._metrics import CallMetrics
from .._protocols import Driver
from .._shell import run_script
from .._types import (
    InitCommand,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from .._validate import SECRET_TAG, new_secret, parse_config, validate_tags
from ._fake_clock import FakeClock, SystemClock
from ._fake_config import FakeConfig, TokenBucket
from ._ssh_server import SSHTestServer

if TYPE_CHECKING:
    import prometheus_client

    from ._fake import FakeInstanceSet

__all__ = [
    "OPERATIONS",
    "CallRecord",
    "FakeCloud",
    "InjectedError",
    "LostResponseError",
    "Misuse",
    "close_named_clouds",
    "named_cloud",
]

_T = TypeVar("_T")

#: The cloud operations, by InstanceSet / Instance method name.
OPERATIONS = frozenset({"create", "instances", "set_tags", "destroy"})
# Which token bucket each operation draws from.
_BUCKET_OF = {"create": "create", "instances": "list", "set_tags": "other", "destroy": "other"}

# Clouds that load_driver("fake") sets find by their config's ``cloud`` name.
_named: dict[str, FakeCloud] = {}


class InjectedError(CloudError):
    """Raised by the fake cloud when a call fails because of its
    ``failure_rates`` knob. The call had no effect; retrying may succeed."""


class LostResponseError(CloudError):
    """Raised by the fake cloud when a call took effect but its response was
    "lost" (the ``lost_responses`` knob), as after a network timeout: a
    ``create`` that raised this did create the instance, and a later listing
    shows it."""


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call that reached the fake cloud (input checks had passed).

    ``operation`` is the method name (``"create"``, ``"instances"``,
    ``"set_tags"``, ``"destroy"``) and ``args`` what it was asked (tags,
    instance type, image, instance id; never secrets or the init command).
    Times are on the cloud's clock: ``called`` when the call came in,
    ``arrived`` when it passed the hold gate (None if it never did) and
    ``finished`` when it returned or raised. ``outcome`` is ``"ok"``,
    ``"cancelled"`` or the exception's class name (``"RateLimitError"``).
    ``instance_id`` is the instance created or acted on, if any.
    """

    operation: str
    set_id: str
    args: Mapping[str, Any]
    called: float
    arrived: float | None
    finished: float
    outcome: str
    instance_id: str | None = None
    error: BaseException | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Misuse:
    """A caller mistake the fake cloud noticed.

    ``kind`` is ``"use-after-stop"`` (a call on a stopped InstanceSet or on an
    instance it returned), ``"use-after-close"`` (a call on a closed cloud) or
    ``"set-tags-gone"`` (``set_tags`` on an instance that no longer exists).
    Destroying an instance twice is *not* misuse: the contract makes it a
    no-op, and callers must retry destroys whose response was lost.
    """

    kind: str
    message: str
    set_id: str
    instance_id: str | None = None


@dataclasses.dataclass(eq=False)
class _VM:
    """One instance as the cloud knows it."""

    seq: int
    id: str
    set_id: str
    provider_type: str
    quota_group: str
    vcpus: int
    price: float
    created: datetime
    visible_at: float  # listings show it from then on
    booted_at: float  # it has an address from then on
    tags: InstanceTags
    remote_user: str
    secret: str = dataclasses.field(repr=False)
    ssh: bool
    # Until tags_fresh_at, listings see old_tags instead of tags (tag_delay).
    old_tags: InstanceTags | None = None
    tags_fresh_at: float = 0.0
    address: str = ""
    server: SSHTestServer | None = None

    def listed_tags(self, now: float) -> InstanceTags:
        if self.old_tags is not None and now < self.tags_fresh_at:
            return self.old_tags
        return self.tags

    def address_at(self, now: float) -> str:
        return self.address if now >= self.booted_at else ""

    def tag_pairs(self) -> set[tuple[str, str]]:
        pairs = set(self.tags.items())
        if self.old_tags is not None:
            pairs.update(self.old_tags.items())
        return pairs


class _Bucket:
    def __init__(self, spec: TokenBucket, now: float) -> None:
        self._burst = float(spec.burst)
        self._refill = spec.refill
        self._tokens = self._burst
        self._last = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until the next
        one arrives (and nothing is taken)."""
        elapsed = max(now - self._last, 0.0)
        self._tokens = min(self._burst, self._tokens + elapsed * self._refill)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._refill


class _Call:
    """What an operation's effect reports back to the call log."""

    def __init__(self, instance_id: str | None) -> None:
        self.instance_id = instance_id


class FakeCloud:
    """An in-memory cloud account with fault-injection knobs.

    ``config`` (a :class:`FakeConfig`, a mapping or a JSON document; see
    :mod:`cloudvm.testing._fake_config` for every key) sets the knobs;
    :meth:`configure` changes them later. ``clock`` is where the cloud reads
    time and sleeps (default: real time); give a :class:`ManualClock` to test
    buckets and delays without sleeping. ``on_misuse`` is called with every
    :class:`Misuse` noticed (they are also kept in :attr:`misuses`), for
    example to fail a test at once. With ``register=True`` the cloud is
    registered process-wide under ``config.cloud``, so that
    ``load_driver("fake")`` sets configured with that name join it.

    Sets made by :meth:`instance_set` or :attr:`driver` with the same id see
    the same instances; sets with different ids see nothing of each other.
    Every call that passes its input checks goes through, in order: the hold
    gate (:meth:`hold`), the token bucket, the operation's faults and effect,
    then the operation's latency, and is recorded in :attr:`calls`.

    Use it as an async context manager, or call :meth:`close`: that stops
    every instance's SSH server. It is not thread-safe; use it from one event
    loop.

    Raises:
        ConfigError: the config is invalid (naming the field).
        ValueError: ``register=True`` and the name is taken.
    """

    def __init__(
        self,
        config: FakeConfig | Mapping[str, Any] | str | bytes | None = None,
        *,
        clock: FakeClock | None = None,
        on_misuse: Callable[[Misuse], None] | None = None,
        register: bool = False,
    ) -> None:
        if config is None:
            config = FakeConfig()
        elif not isinstance(config, FakeConfig):
            config = parse_config(FakeConfig, config, driver="fake")
        self._config = config
        self._clock: FakeClock = clock if clock is not None else SystemClock()
        self._on_misuse = on_misuse
        self._rng = random.Random(config.seed)
        self._buckets: dict[str, _Bucket] = {}
        self._buckets_made = False
        self._seq = 0
        self._vms: dict[str, _VM] = {}
        # set id -> instance id -> VM, in creation order.
        self._sets: dict[str, dict[str, _VM]] = {}
        # set id -> (key, value) -> ids of VMs whose current or stale tags have it.
        self._tag_index: dict[str, dict[tuple[str, str], set[str]]] = {}
        self._usage: dict[str, list[int]] = {}  # quota group -> [instances, vcpus]
        self._calls: list[CallRecord] = []
        self._misuses: list[Misuse] = []
        self._gate: anyio.Event | None = None
        self._gate_operations: frozenset[str] | None = None  # None: all
        self._held = 0
        self._held_changed: anyio.Event | None = None
        self._closed = False
        self._registered = False
        if register:
            if config.cloud in _named:
                raise ValueError(f"a fake cloud named {config.cloud!r} is already registered")
            _named[config.cloud] = self
            self._registered = True

    # -- knobs ---------------------------------------------------------------

    @property
    def config(self) -> FakeConfig:
        """The knobs now in force."""
        return self._config

    @property
    def clock(self) -> FakeClock:
        """The clock the cloud reads time from."""
        return self._clock

    def configure(self, **changes: Any) -> FakeConfig:
        """Change knobs (keys of :class:`FakeConfig`, values as in a config)
        and return the new config. Changing ``rate_limits`` refills every
        bucket; changing ``seed`` re-seeds the random draws. Instances already
        created keep their boot and listing times.

        Raises:
            ConfigError: a key is unknown or a value invalid (naming it).
            ValueError: ``cloud`` cannot change.
        """
        if "cloud" in changes and changes["cloud"] != self._config.cloud:
            raise ValueError("a fake cloud's name cannot change")
        current = {name: getattr(self._config, name) for name in FakeConfig.model_fields}
        new = parse_config(FakeConfig, {**current, **changes}, driver="fake")
        if new.rate_limits != self._config.rate_limits:
            self._buckets_made = False
        if new.seed != self._config.seed:
            self._rng = random.Random(new.seed)
        self._config = new
        return new

    # -- what tests look at --------------------------------------------------

    @property
    def calls(self) -> list[CallRecord]:
        """Every call that reached the cloud, in the order they finished (a copy)."""
        return list(self._calls)

    def clear_calls(self) -> None:
        """Forget the call log."""
        self._calls.clear()

    @property
    def misuses(self) -> list[Misuse]:
        """Every caller mistake noticed so far (a copy)."""
        return list(self._misuses)

    def instance_ids(self, set_id: str | None = None) -> list[str]:
        """The ids of the instances that exist now (of one set, or of all),
        in creation order, ignoring listing delays: the cloud's ground truth."""
        if set_id is None:
            return list(self._vms)
        return list(self._sets.get(set_id, {}))

    def ssh_server(self, instance_id: str) -> SSHTestServer | None:
        """The SSH server backing an instance (None without ``ssh`` or once
        the instance is gone), e.g. to look at the commands it received."""
        vm = self._vms.get(instance_id)
        return None if vm is None else vm.server

    # -- the hold gate --------------------------------------------------------

    def hold(self, *operations: str) -> None:
        """Hold every later call of the given operations (all when none are
        given) before it reaches the cloud, until :meth:`release`. A second
        ``hold`` replaces the operations held from then on. Call it from the
        event loop.

        Raises:
            ValueError: an operation name is unknown.
        """
        unknown = set(operations) - OPERATIONS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {sorted(OPERATIONS)}")
        if self._gate is None:
            self._gate = anyio.Event()
        self._gate_operations = frozenset(operations) if operations else None

    def release(self) -> None:
        """Let every held call (and every later one) through."""
        gate, self._gate = self._gate, None
        self._gate_operations = None
        if gate is not None:
            gate.set()

    @property
    def held(self) -> int:
        """How many calls are waiting at the gate now."""
        return self._held

    async def wait_held(self, count: int) -> None:
        """Wait until at least ``count`` calls are waiting at the gate."""
        while self._held < count:
            if self._held_changed is None:
                self._held_changed = anyio.Event()
            await self._held_changed.wait()

    def _held_moved(self, delta: int) -> None:
        self._held += delta
        changed, self._held_changed = self._held_changed, None
        if changed is not None:
            changed.set()

    async def _pass_gate(self, operation: str) -> None:
        while (gate := self._gate) is not None and (
            self._gate_operations is None or operation in self._gate_operations
        ):
            self._held_moved(+1)
            try:
                await gate.wait()
            finally:
                self._held_moved(-1)

    # -- sets and drivers ------------------------------------------------------

    async def instance_set(
        self,
        id: InstanceSetID,
        tags: SharedResourceTags | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> FakeInstanceSet:
        """A new InstanceSet with id ``id`` in this cloud.

        Raises:
            ValueError: ``id`` is empty or ``tags`` are invalid.
            RuntimeError: the cloud is closed.
        """
        from ._fake import FakeInstanceSet  # here: _fake imports this module

        self._check_open()
        if not isinstance(id, str) or not id:
            raise ValueError("the InstanceSetID must be a non-empty string")
        validate_tags(tags or {}, field="shared resource tags")
        return FakeInstanceSet(
            self,
            id,
            logger if logger is not None else logging.getLogger("cloudvm.fake"),
            CallMetrics(registry, "fake"),
        )

    @property
    def driver(self) -> Driver:
        """A Driver whose sets all live in this cloud. Its config may be empty;
        keys it gives must equal this cloud's (else ConfigError)."""

        async def bound(
            config: Mapping[str, Any] | str | bytes,
            id: InstanceSetID,
            tags: SharedResourceTags,
            logger: logging.Logger | logging.LoggerAdapter[Any],
            registry: prometheus_client.CollectorRegistry | None = None,
        ) -> FakeInstanceSet:
            self.check_joinable(parse_config(FakeConfig, config, driver="fake"))
            return await self.instance_set(id, tags, logger, registry)

        return driver_func(bound)

    def check_joinable(self, config: FakeConfig) -> None:
        """Raise ConfigError unless every key explicitly given in ``config``
        has this cloud's value (a set cannot change a shared cloud's knobs)."""
        differing = sorted(
            name
            for name in config.model_fields_set
            if getattr(config, name) != getattr(self._config, name)
        )
        if differing:
            raise ConfigError(
                f"invalid fake config: the fake cloud {self._config.cloud!r} already exists "
                f"with other values for {', '.join(differing)}; give only 'cloud' to join it, "
                "or change its knobs with FakeCloud.configure()"
            )

    # -- lifecycle -------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once :meth:`close` was called; every later call is refused."""
        return self._closed

    async def close(self) -> None:
        """Stop every instance's SSH server, release held calls (they then
        fail with RuntimeError) and unregister the cloud's name. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._registered and _named.get(self._config.cloud) is self:
            del _named[self._config.cloud]
        self.release()
        servers = [vm.server for vm in self._vms.values() if vm.server is not None]
        for vm in self._vms.values():
            vm.server = None

        async def stop_all() -> None:
            for server in servers:
                await server.stop()

        await run_critical(stop_all)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FakeCloud is closed and cannot be used")

    def report_misuse(self, kind: str, message: str, set_id: str, instance_id: str | None) -> None:
        """Record a :class:`Misuse` and pass it to ``on_misuse``."""
        misuse = Misuse(kind, message, set_id, instance_id)
        self._misuses.append(misuse)
        if self._on_misuse is not None:
            self._on_misuse(misuse)

    # -- the call machinery ----------------------------------------------------

    async def _operate(
        self,
        operation: str,
        set_id: str,
        args: dict[str, Any],
        effect: Callable[[_Call], Awaitable[_T]],
        *,
        instance_id: str | None = None,
    ) -> _T:
        """Run one call: gate, bucket, effect, latency; log it whatever happens."""
        if self._closed:
            self.report_misuse(
                "use-after-close", f"{operation} on a closed FakeCloud", set_id, None
            )
            self._check_open()
        call = _Call(instance_id)
        called = self._clock.now()
        arrived: float | None = None
        outcome = "ok"
        error: BaseException | None = None
        try:
            await self._pass_gate(operation)
            self._check_open()
            arrived = self._clock.now()
            latency: float = getattr(self._config.latency, operation)
            try:
                self._take_token(operation)
                result = await effect(call)
            except CloudError:
                await self._clock.sleep(latency)  # an error answer takes the trip too
                raise
            await self._clock.sleep(latency)
            return result
        except BaseException as exc:
            error = exc
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            outcome = "cancelled" if cancelled else type(exc).__name__
            raise
        finally:
            self._calls.append(
                CallRecord(
                    operation=operation,
                    set_id=set_id,
                    args=MappingProxyType(args),
                    called=called,
                    arrived=arrived,
                    finished=self._clock.now(),
                    outcome=outcome,
                    instance_id=call.instance_id,
                    error=error,
                )
            )

    def _take_token(self, operation: str) -> None:
        limits = self._config.rate_limits
        if limits is None:
            return
        now = self._clock.now()
        if not self._buckets_made:
            self._buckets = {
                kind: _Bucket(spec, now)
                for kind in ("create", "list", "other")
                if (spec := getattr(limits, kind)) is not None
            }
            self._buckets_made = True
        kind = _BUCKET_OF[operation]
        bucket = self._buckets.get(kind)
        if bucket is None:
            return
        wait = bucket.take(now)
        if wait > 0.0:
            raise RateLimitError(
                f"fake cloud: {kind} calls are throttled; the next token arrives in {wait:.3f} s",
                self._clock.wall() + timedelta(seconds=wait),
                code="RequestLimitExceeded",
            )

    def _maybe_fail(self, operation: str) -> None:
        rate: float = getattr(self._config.failure_rates, operation)
        if rate > 0.0 and self._rng.random() < rate:
            raise InjectedError(
                f"fake cloud: injected {operation} failure (failure_rates.{operation}={rate})",
                code="FakeInjectedFailure",
            )

    def _maybe_lose(self, operation: str) -> None:
        rate: float = getattr(self._config.lost_responses, operation)
        if rate > 0.0 and self._rng.random() < rate:
            raise LostResponseError(
                f"fake cloud: the {operation} response was lost (it took effect)",
                code="FakeLostResponse",
            )

    # -- effects (called by the fake InstanceSet through _operate) -------------

    def quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """``quota_groups[provider_type]`` (default "standard"), plus "-spot"
        for preemptible types."""
        group = self._config.quota_groups.get(itype.provider_type, "standard")
        return InstanceQuotaGroup(f"{group}-spot" if itype.preemptible else group)

    async def _create(
        self,
        call: _Call,
        set_id: str,
        itype: InstanceType,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> _VM:
        config = self._config
        group = self.quota_group(itype)
        self._check_capacity(itype, group)
        self._check_quota(itype, group)
        self._maybe_fail("create")
        now = self._clock.now()
        self._seq += 1
        vm = _VM(
            seq=self._seq,
            id=f"i-{self._seq:017x}",
            set_id=set_id,
            provider_type=itype.provider_type,
            quota_group=group,
            vcpus=itype.vcpus,
            price=itype.price,
            created=self._clock.wall(),
            visible_at=now + config.listing_delay,
            booted_at=now + config.boot_delay,
            tags=dict(tags),
            remote_user=config.remote_user,
            secret=new_secret(),
            ssh=config.ssh,
        )
        self._add(vm)
        call.instance_id = vm.id
        if config.ssh:
            # A critical section: a cancelled create must leave either no VM
            # or a fully backed one, never a VM without its server or a
            # server without its VM.
            await run_critical(lambda: self._back_with_server(vm, init_command, public_key))
        else:
            # An address in 198.18.0.0/15 (reserved for benchmarks): unreachable.
            vm.address = f"198.{18 + (vm.seq >> 16) % 2}.{(vm.seq >> 8) % 256}.{vm.seq % 256}"
        self._maybe_lose("create")
        return vm

    def _check_capacity(self, itype: InstanceType, group: str) -> None:
        shortage = self._config.capacity_shortage
        if shortage.everywhere:
            raise CapacityError(
                "fake cloud: no capacity for any instance type",
                instance_type_specific=False,
                quota_group_specific=False,
                code="InsufficientCapacity",
            )
        if itype.provider_type in shortage.instance_types:
            raise CapacityError(
                f"fake cloud: no capacity for instance type {itype.provider_type}",
                instance_type_specific=True,
                quota_group_specific=False,
                code="InsufficientInstanceCapacity",
            )
        if group in shortage.quota_groups:
            raise CapacityError(
                f"fake cloud: no capacity in quota group {group}",
                instance_type_specific=False,
                quota_group_specific=True,
                code="InsufficientGroupCapacity",
            )

    def _check_quota(self, itype: InstanceType, group: str) -> None:
        limit = self._config.quotas.get(group, self._config.default_quota)
        instances, vcpus = self._usage.get(group, (0, 0))
        if limit.instances is not None and instances + 1 > limit.instances:
            raise QuotaError(
                f"fake cloud: quota group {group} already holds {instances} instances "
                f"(quota {limit.instances}); destroy one first",
                code="InstanceLimitExceeded",
            )
        if limit.vcpus is not None and vcpus + itype.vcpus > limit.vcpus:
            raise QuotaError(
                f"fake cloud: quota group {group} holds {vcpus} vCPUs and {itype.vcpus} more "
                f"would exceed its quota of {limit.vcpus}; destroy an instance first",
                code="VcpuLimitExceeded",
            )

    async def _back_with_server(
        self, vm: _VM, init_command: InitCommand, public_key: asyncssh.SSHKey | None
    ) -> None:
        try:
            server = await self._boot_server(vm, init_command, public_key)
        except BaseException:
            self._forget(vm)
            raise
        if self._closed or self._vms.get(vm.id) is not vm:
            await server.stop()  # closed or destroyed while it booted
        else:
            vm.server, vm.address = server, server.address

    async def _boot_server(
        self, vm: _VM, init_command: InitCommand, public_key: asyncssh.SSHKey | None
    ) -> SSHTestServer:
        def metadata_tags() -> dict[str, str]:
            # The secret is an instance tag, as the EC2 driver stores it.
            return {**vm.tags, SECRET_TAG: vm.secret}

        server = SSHTestServer(
            authorized_keys=[public_key] if public_key is not None else [],
            username=vm.remote_user,
            metadata=IMDSv2Service(vm.id, metadata_tags, init_command.encode()),
        )
        await server.start()
        try:
            if init_command:
                await run_script(init_command, server.workdir)
        except BaseException:
            await server.stop()
            raise
        return server

    async def _destroy(self, call: _Call, set_id: str) -> None:
        self._maybe_fail("destroy")
        vm = self._vms.get(call.instance_id or "")
        if vm is not None and vm.set_id == set_id:
            self._forget(vm)
            server, vm.server = vm.server, None
            if server is not None:
                await server.stop()  # it finishes whatever cancels us
        else:
            await anyio.lowlevel.checkpoint()
        self._maybe_lose("destroy")

    async def _set_tags(self, call: _Call, set_id: str, tags: InstanceTags) -> InstanceTags:
        self._maybe_fail("set_tags")
        vm = self._vms.get(call.instance_id or "")
        if vm is None or vm.set_id != set_id:
            self.report_misuse(
                "set-tags-gone",
                f"set_tags on instance {call.instance_id}, which no longer exists",
                set_id,
                call.instance_id,
            )
            raise CloudError(
                f"fake cloud: instance {call.instance_id} does not exist",
                code="InvalidInstanceID.NotFound",
            )
        now = self._clock.now()
        before = vm.tag_pairs()
        if self._config.tag_delay > 0.0:
            vm.old_tags = vm.listed_tags(now)  # what listings showed until now
            vm.tags_fresh_at = now + self._config.tag_delay
        else:
            vm.old_tags = None
        vm.tags = dict(tags)
        self._reindex(vm, before, vm.tag_pairs())
        await anyio.lowlevel.checkpoint()
        self._maybe_lose("set_tags")
        return dict(tags)

    async def _list(
        self, call: _Call, set_id: str, wanted: InstanceTags
    ) -> list[tuple[_VM, InstanceTags, str]]:
        now = self._clock.now()
        members = self._sets.get(set_id, {})
        vms: Iterable[_VM]
        if wanted:
            index = self._tag_index.get(set_id, {})
            smallest = min((index.get(pair, set()) for pair in wanted.items()), key=len)
            vms = sorted((members[i] for i in smallest), key=lambda vm: vm.seq)
        else:
            vms = members.values()
        found = []
        for vm in vms:
            if vm.visible_at > now:
                continue  # not yet consistent
            tags = vm.listed_tags(now)
            if all(tags.get(key) == value for key, value in wanted.items()):
                found.append((vm, dict(tags), vm.address_at(now)))
        await anyio.lowlevel.checkpoint()
        return found

    # -- bookkeeping (synchronous) ---------------------------------------------

    def _add(self, vm: _VM) -> None:
        self._vms[vm.id] = vm
        self._sets.setdefault(vm.set_id, {})[vm.id] = vm
        self._reindex(vm, set(), vm.tag_pairs())
        usage = self._usage.setdefault(vm.quota_group, [0, 0])
        usage[0] += 1
        usage[1] += vm.vcpus

    def _forget(self, vm: _VM) -> None:
        if self._vms.pop(vm.id, None) is None:
            return
        del self._sets[vm.set_id][vm.id]
        self._reindex(vm, vm.tag_pairs(), set())
        usage = self._usage[vm.quota_group]
        usage[0] -= 1
        usage[1] -= vm.vcpus

    def _reindex(self, vm: _VM, before: set[tuple[str, str]], after: set[tuple[str, str]]) -> None:
        index = self._tag_index.setdefault(vm.set_id, {})
        for pair in before - after:
            ids = index.get(pair)
            if ids is not None:
                ids.discard(vm.id)
                if not ids:
                    del index[pair]
        for pair in after - before:
            index.setdefault(pair, set()).add(vm.id)


def named_cloud(config: FakeConfig) -> FakeCloud:
    """The process-wide cloud called ``config.cloud``: the registered one,
    checked with :meth:`FakeCloud.check_joinable`, or a new one made from
    ``config`` and registered."""
    cloud = _named.get(config.cloud)
    if cloud is None:
        return FakeCloud(config, register=True)
    cloud.check_joinable(config)
    return cloud


async def close_named_clouds() -> None:
    """Close and forget every process-wide fake cloud (those registered by
    ``load_driver("fake")`` sets or with ``register=True``). Tests call it in
    teardown so no SSH server outlives them."""
    for cloud in list(_named.values()):
        await cloud.close()
    _named.clear()
