"""cloudvm.resilient against a scripted stand-in cloud and a fake clock.

Nothing here really sleeps: the wrapper's clock and sleep are a FakeClock whose
time moves only when a test calls ``advance``; ``settle`` lets every task run
until all are blocked, so "no call reached the cloud" is a statement about all
waiters, not a race.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import asyncssh
import prometheus_client
import pytest

import cloudvm
from cloudvm import (
    CapacityError,
    HostKeyError,
    ImageID,
    InitCommand,
    Instance,
    InstanceID,
    InstancePrice,
    InstanceQuotaGroup,
    InstanceTags,
    InstanceType,
    QuotaError,
    RateLimitError,
    ResiliencePolicy,
)
from cloudvm._resilient import MIN_HOLD_OFF, ResilientInstance, ResilientInstanceSet, _Window
from cloudvm.driverkit import InstanceSetBase

START = datetime(2030, 1, 1, tzinfo=UTC)


def _itype(name: str, provider_type: str, *, preemptible: bool = False) -> InstanceType:
    return InstanceType(
        name=name,
        provider_type=provider_type,
        vcpus=2,
        ram=2**30,
        scratch=0,
        included_scratch=0,
        added_scratch=0,
        price=0.1,
        preemptible=preemptible,
    )


# The double's quota group is the first letter of the provider type.
A1 = _itype("a1", "a.1")
A1_SPOT = _itype("a1-spot", "a.1", preemptible=True)
A2 = _itype("a2", "a.2")
B1 = _itype("b1", "b.1")


class FakeClock:
    """The wrapper's clock and sleep; time moves only in :meth:`advance`."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[datetime, anyio.Event]] = []

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        return self.now + timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self.at(seconds), anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        self.now = self.at(seconds)
        for wake, event in list(self._sleepers):
            if wake <= self.now:
                event.set()
        await settle()

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


class FakeInstance:
    """An instance of the double; its calls go through the double's script."""

    zone = "zone-1"  # a driver-specific extra

    def __init__(self, cloud: ScriptedCloud, n: int, provider_type: str) -> None:
        self._cloud = cloud
        self._id = InstanceID(f"i-{n}")
        self._provider_type = provider_type
        self.verified: list[tuple[asyncssh.SSHKey, asyncssh.SSHClientConnection | None]] = []
        self.verify_error: Exception | None = None

    @property
    def id(self) -> InstanceID:
        return self._id

    @property
    def provider_type(self) -> str:
        return self._provider_type

    @property
    def tags(self) -> InstanceTags:
        return {"role": "worker"}

    @property
    def address(self) -> str:
        return "10.0.0.1:22"

    @property
    def remote_user(self) -> str:
        return "admin"

    async def set_tags(self, tags: InstanceTags) -> None:
        await self._cloud.enter("set_tags")

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        return [InstancePrice(START, itype.price)]

    async def destroy(self) -> None:
        await self._cloud.enter("destroy")

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        self.verified.append((key, conn))
        if self.verify_error is not None:
            raise self.verify_error

    def __str__(self) -> str:
        return self._id


class ScriptedCloud(InstanceSetBase):
    """A stand-in InstanceSet: counts calls, raises scripted errors, and can
    hold calls of one operation in flight until released."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.errors: defaultdict[str, list[Exception]] = defaultdict(list)
        self.gates: dict[str, anyio.Event] = {}
        self.in_flight: Counter[str] = Counter()  # calls in progress, by operation
        self.max_in_flight: Counter[str] = Counter()
        self.stopped = False
        self.instances_made: list[FakeInstance] = []

    async def enter(self, operation: str) -> None:
        self.calls.append(operation)
        self.in_flight[operation] += 1
        self.max_in_flight[operation] = max(
            self.max_in_flight[operation], self.in_flight[operation]
        )
        try:
            gate = self.gates.get(operation)
            if gate is not None:
                await gate.wait()
            if self.errors[operation]:
                raise self.errors[operation].pop(0)
        finally:
            self.in_flight[operation] -= 1

    def count(self, operation: str) -> int:
        return self.calls.count(operation)

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        await self.enter("create")
        instance = FakeInstance(self, len(self.instances_made), itype.provider_type)
        self.instances_made.append(instance)
        return instance

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        await self.enter("instances")
        return list(self.instances_made)

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        return InstanceQuotaGroup(itype.provider_type[0])

    async def _stop(self) -> None:
        self.stopped = True


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def decisions(self, level: int = logging.INFO) -> list[str]:
        return [r.__dict__["decision"] for r in self.records if r.levelno >= level]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud() -> ScriptedCloud:
    return ScriptedCloud()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def wrap(
    cloud: ScriptedCloud,
    clock: FakeClock,
    recorder: Recorder | None = None,
    *,
    rng: Callable[[], float] = lambda: 0.0,
    **policy: Any,
) -> ResilientInstanceSet:
    logger = logging.Logger("tests.resilient")
    if recorder is not None:
        logger.addHandler(recorder)
    policy.setdefault("jitter", 0.0)
    wrapped = cloudvm.resilient(
        cloud, logger=logger, clock=clock, sleep=clock.sleep, rng=rng, **policy
    )
    assert isinstance(wrapped, ResilientInstanceSet)
    return wrapped


async def create(instance_set: cloudvm.InstanceSet, itype: InstanceType = A1) -> Instance:
    return await instance_set.create(itype, ImageID("img-1"), {}, InitCommand("true"), None)


def rate_limit(clock: FakeClock, seconds: float) -> RateLimitError:
    return RateLimitError("slow down", clock.at(seconds), code="RequestLimitExceeded")


async def outcome_of(results: list[object], call: Callable[[], Awaitable[object]]) -> None:
    """Run ``call`` and record its result or the exception it raised."""
    try:
        results.append(await call())
    except Exception as exc:
        results.append(exc)


# --------------------------------------------------------------------------- rate limits


async def test_rate_limited_create_is_raised_to_its_caller(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    error = rate_limit(clock, 30)
    cloud.errors["create"].append(error)
    with pytest.raises(RateLimitError) as raised:
        await create(wrapped)
    assert raised.value is error
    assert cloud.calls == ["create"]


async def test_no_call_reaches_the_cloud_during_a_hold_off(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.errors["create"].append(rate_limit(clock, 30))
    with pytest.raises(RateLimitError):
        await create(wrapped)
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        assert cloud.calls == ["create"]
        await clock.advance(29.9)
        assert cloud.calls == ["create"]
        assert results == []
        await clock.advance(0.1)
    assert cloud.calls == ["create"] * 6
    assert all(isinstance(result, ResilientInstance) for result in results)
    assert len(results) == 5


async def test_hold_offs_are_per_kind(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_wait=0)
    cloud.errors["create"].append(rate_limit(clock, 30))
    with pytest.raises(RateLimitError):
        await create(wrapped)
    assert await wrapped.instances() == []
    cloud.errors["instances"].append(rate_limit(clock, 30))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    # max_wait=0: create and list are held off now, "other" is not.
    with pytest.raises(RateLimitError):
        await create(wrapped)
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    await ResilientInstance(wrapped, FakeInstance(cloud, 99, "a.1")).set_tags({"a": "b"})
    assert cloud.calls == ["create", "instances", "instances", "set_tags"]


async def test_waiters_wake_within_the_jitter_after_earliest_retry(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    fractions = itertools.cycle([0.0, 0.5, 0.99])
    wrapped = wrap(cloud, clock, jitter=2.0, rng=lambda: next(fractions))
    cloud.errors["instances"].append(rate_limit(clock, 10))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        await clock.advance(9.99)
        assert cloud.count("instances") == 1
        await clock.advance(0.01)  # earliest_retry: the waiter with no jitter goes
        assert cloud.count("instances") == 2
        await clock.advance(1.0)
        assert cloud.count("instances") == 3
        await clock.advance(0.98)
        assert cloud.count("instances") == 4
    assert results == [[], [], []]


async def test_concurrent_rate_limits_log_one_line(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    # A window of ten: all ten calls are in flight before the first error is known.
    wrapped = wrap(cloud, clock, recorder, initial_window=10)
    cloud.gates["instances"] = anyio.Event()
    cloud.errors["instances"].extend(rate_limit(clock, 10) for _ in range(10))
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(10):  # ten calls in flight, all to be throttled
            tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        cloud.gates["instances"].set()
        await settle()
        assert len(results) == 10
        assert all(isinstance(result, RateLimitError) for result in results)
        for _ in range(10):  # ten more wait for the hold-off
            tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        assert cloud.count("instances") == 10
        await clock.advance(10)
    assert cloud.count("instances") == 20
    assert results[10:] == [[]] * 10
    assert recorder.decisions(logging.DEBUG) == ["hold_off_started"]
    (record,) = recorder.records
    assert record.__dict__["kind"] == "list"
    assert record.__dict__["until"] == (START + timedelta(seconds=10)).isoformat()
    assert record.__dict__["error_code"] == "RequestLimitExceeded"


async def test_waiters_during_a_hold_off_log_nothing(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    wrapped = wrap(cloud, clock, recorder)
    cloud.errors["instances"].append(rate_limit(clock, 10))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(wrapped.instances)
        await settle()
        assert clock.sleeping == 20
        await clock.advance(10)
    assert cloud.count("instances") == 21
    assert recorder.decisions(logging.DEBUG) == ["hold_off_started"]
    assert recorder.records[0].__dict__["until"] == (START + timedelta(seconds=10)).isoformat()


async def test_a_later_rate_limit_extends_the_hold_off(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    wrapped = wrap(cloud, clock, recorder)
    cloud.errors["instances"].extend([rate_limit(clock, 10), rate_limit(clock, 20)])
    cloud.gates["instances"] = anyio.Event()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, wrapped.instances)
        tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        cloud.gates["instances"].set()
        await settle()
        assert all(isinstance(result, RateLimitError) for result in results)
        tg.start_soon(outcome_of, results, wrapped.instances)
        await clock.advance(15)
        assert cloud.count("instances") == 2
        await clock.advance(5)
    assert cloud.count("instances") == 3
    assert recorder.decisions(logging.INFO) == ["hold_off_started"]
    assert recorder.decisions(logging.DEBUG) == ["hold_off_started", "hold_off_extended"]


async def test_a_wait_longer_than_max_wait_raises_at_once(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, max_wait=60)
    error = rate_limit(clock, 300)
    cloud.errors["create"].append(error)
    with pytest.raises(RateLimitError):
        await create(wrapped)
    with pytest.raises(RateLimitError) as raised:
        await create(wrapped)
    assert raised.value is not error
    assert raised.value.__cause__ is error
    assert raised.value.earliest_retry == error.earliest_retry
    assert raised.value.code == "RequestLimitExceeded"
    assert "max_wait" in str(raised.value)
    assert cloud.calls == ["create"]
    assert clock.now == START


async def test_a_waiter_proceeds_when_the_hold_off_ends_within_max_wait(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, max_wait=60, jitter=5.0, rng=lambda: 0.99)
    cloud.errors["instances"].append(rate_limit(clock, 58))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped.instances)
        await settle()
        # The jitter would take it past max_wait; it goes at max_wait instead.
        await clock.advance(59.9)
        assert cloud.count("instances") == 1
        await clock.advance(0.1)
    assert cloud.count("instances") == 2


async def test_an_earliest_retry_in_the_past_still_holds_off_briefly(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.errors["instances"].append(rate_limit(clock, -5))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped.instances)
        await settle()
        assert cloud.count("instances") == 1
        await clock.advance(MIN_HOLD_OFF)
    assert cloud.count("instances") == 2


async def test_retry_rate_limited_waits_and_retries(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, retry_rate_limited=True)
    cloud.errors["create"].append(rate_limit(clock, 5))
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        assert cloud.calls == ["create"]
        assert results == []
        await clock.advance(5)
    assert cloud.calls == ["create", "create"]
    assert isinstance(results[0], ResilientInstance)


async def test_retry_rate_limited_gives_up_beyond_max_wait(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, retry_rate_limited=True, max_wait=10)
    error = rate_limit(clock, 60)
    cloud.errors["instances"].append(error)
    with pytest.raises(RateLimitError) as raised:
        await wrapped.instances()
    assert raised.value is error
    assert cloud.calls == ["instances"]


# --------------------------------------------------------------------------- quota


async def test_quota_error_fails_fast_until_an_instance_is_destroyed(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    wrapped = wrap(cloud, clock, recorder)
    instance = await create(wrapped)
    error = QuotaError("instance limit exceeded", code="InstanceLimitExceeded")
    cloud.errors["create"].append(error)
    with pytest.raises(QuotaError) as first:
        await create(wrapped)
    assert first.value is error
    for itype in (A1, B1, A1_SPOT):
        with pytest.raises(QuotaError) as refused:
            await create(wrapped, itype)
        assert refused.value is not error
        assert refused.value.__cause__ is error
        assert refused.value.code == "InstanceLimitExceeded"
    assert cloud.count("create") == 2
    assert await wrapped.instances() != []  # listing is not affected
    await instance.destroy()
    await create(wrapped)
    assert cloud.count("create") == 3
    assert recorder.decisions() == ["at_quota", "fail_fast_quota", "quota_cleared"]


async def test_at_quota_ends_after_quota_hold(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, quota_hold=60)
    cloud.errors["create"].append(QuotaError("quota"))
    with pytest.raises(QuotaError):
        await create(wrapped)
    await clock.advance(59.9)
    with pytest.raises(QuotaError):
        await create(wrapped)
    assert cloud.count("create") == 1
    await clock.advance(0.1)
    await create(wrapped)
    assert cloud.count("create") == 2


async def test_quota_error_is_never_retried(cloud: ScriptedCloud, clock: FakeClock) -> None:
    class QuotaAndRateLimit(QuotaError, RateLimitError):
        pass

    wrapped = wrap(cloud, clock, retry_rate_limited=True, max_wait=0)
    error = QuotaAndRateLimit("quota and throttled", clock.at(30))
    cloud.errors["create"].append(error)
    with pytest.raises(QuotaError) as raised:
        await create(wrapped)
    assert raised.value is error
    assert cloud.calls == ["create"]
    # Both meanings are remembered: at quota, and creates are held off.
    with pytest.raises(QuotaError):
        await create(wrapped)
    await ResilientInstance(wrapped, FakeInstance(cloud, 7, "a.1")).destroy()
    with pytest.raises(RateLimitError):
        await create(wrapped)
    assert cloud.calls == ["create", "destroy"]


async def test_quota_error_from_a_create_overlapping_a_destroy_is_not_remembered(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    instance = await create(wrapped)
    cloud.gates["create"] = anyio.Event()
    cloud.errors["create"].append(QuotaError("quota"))
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        await instance.destroy()  # frees quota while the create is in flight
        cloud.gates["create"].set()
    assert isinstance(results[0], QuotaError)
    await create(wrapped)
    assert cloud.count("create") == 3


async def test_waiting_creates_learn_of_a_quota_error_before_calling(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.errors["create"].extend([rate_limit(clock, 10), QuotaError("quota")])
    with pytest.raises(RateLimitError):
        await create(wrapped)
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        await clock.advance(10)
    # The first waiter met the quota; the other three were refused without a call.
    assert cloud.count("create") == 2
    assert len(results) == 4
    assert all(isinstance(result, QuotaError) for result in results)


# --------------------------------------------------------------------------- capacity


@pytest.mark.parametrize(
    ("type_specific", "group_specific", "refused", "allowed"),
    [
        pytest.param(True, False, [A1], [A2, A1_SPOT, B1], id="instance-type"),
        pytest.param(True, True, [A1], [A2, B1], id="instance-type-wins"),
        pytest.param(False, True, [A1, A2], [B1], id="quota-group"),
        pytest.param(False, False, [A1, A2, B1, A1_SPOT], [], id="every-type"),
    ],
)
async def test_capacity_error_is_remembered_for_capacity_hold(
    cloud: ScriptedCloud,
    clock: FakeClock,
    type_specific: bool,
    group_specific: bool,
    refused: list[InstanceType],
    allowed: list[InstanceType],
) -> None:
    wrapped = wrap(cloud, clock, capacity_hold=120)
    error = CapacityError(
        "no capacity",
        instance_type_specific=type_specific,
        quota_group_specific=group_specific,
        code="InsufficientInstanceCapacity",
    )
    cloud.errors["create"].append(error)
    with pytest.raises(CapacityError) as first:
        await create(wrapped, A1)
    assert first.value is error
    for itype in refused:
        with pytest.raises(CapacityError) as again:
            await create(wrapped, itype)
        assert again.value is not error
        assert again.value.__cause__ is error
        assert again.value.instance_type_specific is type_specific
        assert again.value.quota_group_specific is group_specific
        assert again.value.code == "InsufficientInstanceCapacity"
    assert cloud.count("create") == 1
    for itype in allowed:
        await create(wrapped, itype)
    assert cloud.count("create") == 1 + len(allowed)
    await clock.advance(119.9)
    with pytest.raises(CapacityError):
        await create(wrapped, A1)
    await clock.advance(0.1)
    for itype in refused:
        await create(wrapped, itype)
    assert cloud.count("create") == 1 + len(allowed) + len(refused)


async def test_capacity_fail_fast_is_logged_once_per_shortage(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    wrapped = wrap(cloud, clock, recorder)
    cloud.errors["create"].append(
        CapacityError("none", instance_type_specific=True, quota_group_specific=False)
    )
    with pytest.raises(CapacityError):
        await create(wrapped)
    for _ in range(5):
        with pytest.raises(CapacityError):
            await create(wrapped)
    assert recorder.decisions() == ["capacity_remembered", "fail_fast_capacity"]
    assert recorder.records[0].__dict__["scope"] == "instance type a.1"
    assert recorder.records[1].__dict__["instance_type"] == "a.1"


async def test_destroy_does_not_clear_a_capacity_shortage(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    instance = await create(wrapped, B1)
    cloud.errors["create"].append(
        CapacityError("none", instance_type_specific=False, quota_group_specific=False)
    )
    with pytest.raises(CapacityError):
        await create(wrapped)
    await instance.destroy()
    with pytest.raises(CapacityError):
        await create(wrapped)
    assert cloud.count("create") == 2


# --------------------------------------------------------------------------- limits


async def test_rate_cap_spaces_calls(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_calls_per_second=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped.instances)
        tg.start_soon(lambda: create(wrapped))
        tg.start_soon(wrapped.instances)
        await settle()
        assert len(cloud.calls) == 1
        await clock.advance(0.49)
        assert len(cloud.calls) == 1
        await clock.advance(0.01)
        assert len(cloud.calls) == 2
        await clock.advance(0.5)
        assert len(cloud.calls) == 3


async def test_rate_cap_burst(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_calls_per_second=1, max_calls_burst=3)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(wrapped.instances)
        await settle()
        assert cloud.count("instances") == 3
        await clock.advance(1)
    assert cloud.count("instances") == 4


async def test_rate_cap_wait_beyond_max_wait_raises(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_calls_per_second=1, max_wait=0.5)
    await wrapped.instances()
    with pytest.raises(RateLimitError, match="rate cap") as raised:
        await wrapped.instances()
    assert raised.value.earliest_retry == clock.at(1)
    assert cloud.count("instances") == 1


async def test_max_concurrent_creates(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_concurrent_creates=2)
    cloud.gates["create"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(lambda: create(wrapped))
        await settle()
        assert cloud.count("create") == 2
        await wrapped.instances()  # other kinds are not limited
        cloud.gates["create"].set()
    assert cloud.count("create") == 5
    assert cloud.max_in_flight["create"] == 2


# --------------------------------------------------------------------------- adaptive window


async def next_round(cloud: ScriptedCloud, operation: str = "create") -> None:
    """Let the calls now held at the double's door through, and hold the next ones."""
    gate = cloud.gates[operation]
    cloud.gates[operation] = anyio.Event()
    gate.set()
    await settle()


async def test_the_window_starts_small_and_doubles_while_calls_succeed(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.gates["create"] = anyio.Event()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        rounds = [cloud.in_flight["create"]]
        while len(results) < 20:
            await next_round(cloud)
            rounds.append(cloud.in_flight["create"])
    # One success adds one call to the window: it doubles every round.
    assert rounds == [2, 4, 8, 6, 0]
    assert all(isinstance(result, ResilientInstance) for result in results)
    assert await wrapped.instances() != []  # the list window is its own


async def test_the_window_grows_only_while_it_limits_the_callers(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, initial_window=1)
    for _ in range(10):  # one caller at a time never needs a larger window
        await create(wrapped)
    cloud.gates["create"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: create(wrapped))
        await settle()
        assert cloud.in_flight["create"] == 2  # grown once, by the first success
        cloud.gates["create"].set()


async def test_max_window_caps_the_window(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, initial_window=1, max_window=3)
    cloud.gates["create"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(lambda: create(wrapped))
        await settle()
        for _ in range(5):
            await next_round(cloud)
        cloud.gates["create"].set()
    assert cloud.count("create") == 12
    assert cloud.max_in_flight["create"] == 3


async def test_a_rate_limit_collapses_the_window_and_a_probe_goes_alone(
    cloud: ScriptedCloud, clock: FakeClock, recorder: Recorder
) -> None:
    wrapped = wrap(cloud, clock, recorder, initial_window=4)
    cloud.gates["create"] = anyio.Event()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        assert cloud.in_flight["create"] == 4
        cloud.errors["create"].append(rate_limit(clock, 10))
        await next_round(cloud)  # one throttled, three created
        assert cloud.count("create") == 4
        assert cloud.in_flight["create"] == 0  # held off: nobody else goes
        await clock.advance(10)
        # The hold-off is over: the probe goes alone, the other seven wait for it.
        assert cloud.count("create") == 5
        assert cloud.in_flight["create"] == 1
        cloud.errors["create"].append(rate_limit(clock, 10))
        await next_round(cloud)  # the probe is throttled: a new hold-off, nobody sent
        assert cloud.count("create") == 5
        await clock.advance(10)
        assert cloud.in_flight["create"] == 1  # a new probe, alone again
        await next_round(cloud)  # it succeeds: two go
        assert cloud.in_flight["create"] == 2
        cloud.gates["create"].set()
    assert cloud.count("create") == 12  # each caller called once: no retries
    assert [type(r).__name__ for r in results].count("RateLimitError") == 2
    assert recorder.decisions() == ["hold_off_started", "hold_off_started"]


async def test_calls_in_flight_before_a_rate_limit_do_not_regrow_the_window(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, initial_window=8)
    cloud.gates["create"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(outcome_of, [], lambda: create(wrapped))
        await settle()
        cloud.errors["create"].append(rate_limit(clock, 10))
        await next_round(cloud)  # the first of eight is throttled, seven succeed
        await clock.advance(10)
        assert cloud.in_flight["create"] == 1  # the seven successes grew nothing
        cloud.gates["create"].set()
    assert cloud.count("create") == 16


async def test_adaptive_concurrency_off_sends_every_caller_at_once(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, adaptive_concurrency=False)
    cloud.gates["create"] = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(lambda: create(wrapped))
        await settle()
        assert cloud.in_flight["create"] == 10
        cloud.gates["create"].set()


async def test_a_wait_for_the_window_longer_than_max_wait_raises(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    registry = prometheus_client.CollectorRegistry()
    logger = logging.Logger("tests.resilient")
    wrapped = cloudvm.resilient(
        cloud,
        logger=logger,
        registry=registry,
        clock=clock,
        sleep=clock.sleep,
        initial_window=1,
        max_window=1,
        max_wait=5,
    )
    cloud.gates["instances"] = anyio.Event()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        await clock.advance(4.9)
        assert results == []
        await clock.advance(0.1)
        (raised,) = results
        assert isinstance(raised, RateLimitError)
        assert "max_wait" in str(raised)
        assert clock.sleeping == 0
        cloud.gates["instances"].set()
    assert cloud.count("instances") == 1
    assert registry.get_sample_value(
        "cloudvm_resilient_decisions_total", {"kind": "list", "decision": "gave_up"}
    )
    await wrapped.instances()  # the window is free again
    assert cloud.count("instances") == 2


async def test_cancelled_window_waiters_and_calls_leave_the_window_consistent(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, initial_window=1, max_window=1)
    cloud.gates["create"] = anyio.Event()
    in_flight, queued = anyio.CancelScope(), anyio.CancelScope()

    async def cancellable(scope: anyio.CancelScope) -> None:
        with scope:
            await create(wrapped)

    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancellable, in_flight)
        await settle()
        tg.start_soon(cancellable, queued)
        for _ in range(2):
            tg.start_soon(outcome_of, results, lambda: create(wrapped))
        await settle()
        assert cloud.in_flight["create"] == 1
        queued.cancel()  # a waiter leaves the queue
        await settle()
        assert cloud.count("create") == 1
        in_flight.cancel()  # a call in flight frees its slot for the next waiter
        await settle()
        assert cloud.count("create") == 2
        assert cloud.in_flight["create"] == 1
        cloud.gates["create"].set()
    assert len(results) == 2
    assert cloud.count("create") == 3
    assert cloud.max_in_flight["create"] == 1
    await create(wrapped)  # nothing leaked: a new caller goes at once
    assert cloud.count("create") == 4


async def test_a_waiter_cancelled_after_it_was_admitted_gives_its_slot_back() -> None:
    window = _Window(1, 1)
    first = window.try_admit()
    assert first is not None
    waiter, later = window.enqueue(), window.enqueue()
    window.release(first, "ok")  # the waiter is admitted (not yet running)...
    assert _Window.admitted(waiter)
    assert not _Window.admitted(later)
    window.abandon(waiter)  # ...and cancelled before it ran: the next one goes
    assert _Window.admitted(later)
    assert window.in_flight == 1
    window.release(later, "ok")
    assert window.in_flight == 0
    assert window.try_admit() is not None


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_waiter_leaves_the_wrapper_consistent(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.errors["instances"].append(rate_limit(clock, 10))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    results: list[object] = []
    waiter_scope = anyio.CancelScope()

    async def cancelled_waiter() -> None:
        with waiter_scope:
            await wrapped.instances()

    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, wrapped.instances)
        tg.start_soon(cancelled_waiter)
        await settle()
        assert clock.sleeping == 2
        waiter_scope.cancel()
        await settle()
        assert clock.sleeping == 1
        await clock.advance(10)
    assert results == [[]]
    assert cloud.count("instances") == 2  # the cancelled waiter never called
    await wrapped.instances()  # and nothing is left held off
    assert cloud.count("instances") == 3


async def test_cancelled_rate_cap_waiter_returns_its_token(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock, max_calls_per_second=1)
    await wrapped.instances()
    waiter_scope = anyio.CancelScope()

    async def cancelled_waiter() -> None:
        with waiter_scope:
            await wrapped.instances()  # would go at 2 s

    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped.instances)  # goes at 1 s
        await settle()
        tg.start_soon(cancelled_waiter)
        await settle()
        waiter_scope.cancel()
        await settle()
        tg.start_soon(wrapped.instances)  # takes the cancelled waiter's place at 2 s, not 3 s
        await settle()
        await clock.advance(1)
        assert cloud.count("instances") == 2
        await clock.advance(1)
        assert cloud.count("instances") == 3


async def test_cancelled_create_frees_its_slot(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock, max_concurrent_creates=1)
    cloud.gates["create"] = anyio.Event()
    scope = anyio.CancelScope()

    async def cancelled_create() -> None:
        with scope:
            await create(wrapped)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled_create)
        await settle()
        assert cloud.in_flight["create"] == 1
        scope.cancel()  # cancelled while the cloud call is in flight
    assert cloud.in_flight["create"] == 0
    cloud.gates["create"].set()
    with anyio.fail_after(5):  # a leaked slot would hang here
        await create(wrapped)
    assert cloud.count("create") == 2


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("retry_rate_limited", "yes", TypeError),
        ("max_wait", -1, ValueError),
        ("max_wait", float("inf"), ValueError),
        ("max_wait", "5", TypeError),
        ("jitter", float("nan"), ValueError),
        ("capacity_hold", True, TypeError),
        ("quota_hold", -0.1, ValueError),
        ("max_concurrent_creates", 0, ValueError),
        ("max_concurrent_creates", 1.5, TypeError),
        ("max_calls_per_second", 0, ValueError),
        ("max_calls_burst", 0, ValueError),
        ("adaptive_concurrency", 1, TypeError),
        ("initial_window", 0, ValueError),
        ("initial_window", 2.0, TypeError),
        ("max_window", 0, ValueError),
        ("max_window", True, TypeError),
    ],
)
def test_bad_policy_values_raise_naming_the_field(
    cloud: ScriptedCloud, field: str, value: object, error: type[Exception]
) -> None:
    fields: dict[str, Any] = {field: value}
    with pytest.raises(error, match=rf"ResiliencePolicy\.{field} must be"):
        ResiliencePolicy(**fields)
    with pytest.raises(error, match=rf"ResiliencePolicy\.{field} must be"):
        cloudvm.resilient(cloud, **fields)


def test_an_initial_window_above_max_window_is_refused(cloud: ScriptedCloud) -> None:
    with pytest.raises(ValueError, match=r"ResiliencePolicy\.initial_window must be at most"):
        ResiliencePolicy(initial_window=4, max_window=2)
    with pytest.raises(ValueError, match=r"ResiliencePolicy\.initial_window must be at most"):
        cloudvm.resilient(cloud, initial_window=4, max_window=2)
    assert ResiliencePolicy(initial_window=2, max_window=2).max_window == 2


def test_unknown_policy_field_is_named(cloud: ScriptedCloud) -> None:
    with pytest.raises(TypeError, match="'max_wiat'"):
        cloudvm.resilient(cloud, max_wiat=5)


def test_policy_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ResiliencePolicy(True)  # type: ignore[call-arg]


def test_keywords_override_the_policy(cloud: ScriptedCloud) -> None:
    wrapped = cloudvm.resilient(cloud, policy=ResiliencePolicy(max_wait=5), jitter=0.25)
    assert isinstance(wrapped, ResilientInstanceSet)
    assert wrapped.policy == ResiliencePolicy(max_wait=5, jitter=0.25)
    assert cloudvm.resilient(cloud).policy == ResiliencePolicy()  # type: ignore[attr-defined]


def test_only_an_instance_set_can_be_wrapped() -> None:
    with pytest.raises(TypeError, match="InstanceSet"):
        cloudvm.resilient(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- metrics


async def test_decisions_are_counted_in_a_registry(cloud: ScriptedCloud, clock: FakeClock) -> None:
    registry = prometheus_client.CollectorRegistry()
    wrapped = cloudvm.resilient(
        cloud, registry=registry, clock=clock, sleep=clock.sleep, max_wait=0
    )
    cloudvm.resilient(cloud, registry=registry)  # a second wrapper shares the counter
    cloud.errors["instances"].append(rate_limit(clock, 10))
    cloud.errors["create"].append(QuotaError("quota"))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    for _ in range(3):
        with pytest.raises(QuotaError):
            await create(wrapped)

    def sample(kind: str, decision: str) -> float | None:
        value = registry.get_sample_value(
            "cloudvm_resilient_decisions_total", {"kind": kind, "decision": decision}
        )
        return None if value is None else float(value)

    assert sample("list", "hold_off_started") == 1
    assert sample("list", "gave_up") == 1
    assert sample("create", "at_quota") == 1
    assert sample("create", "fail_fast_quota") == 2
    assert sample("create", "hold_off_started") is None


# --------------------------------------------------------------------------- delegation


async def test_instances_are_wrapped_and_delegate(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock)
    created = await create(wrapped)
    (listed,) = await wrapped.instances()
    inner = cloud.instances_made[0]
    for instance in (created, listed):
        assert isinstance(instance, ResilientInstance)
        assert isinstance(instance, cloudvm.Instance)
        assert instance.wrapped is inner
        assert instance.id == "i-0"
        assert instance.provider_type == "a.1"
        assert instance.tags == {"role": "worker"}
        assert instance.address == "10.0.0.1:22"
        assert instance.remote_user == "admin"
        assert str(instance) == "i-0"
        assert instance.price_history(A1) == [InstancePrice(START, 0.1)]
        assert instance.zone == "zone-1"
        with pytest.raises(AttributeError):
            _ = instance._cloud


async def test_host_key_verification_delegates_unchanged(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    instance = await create(wrapped)
    inner = cloud.instances_made[0]
    key = asyncssh.generate_private_key("ssh-ed25519")
    await instance.verify_host_key(key, None)
    assert inner.verified == [(key, None)]
    for error in (HostKeyError("not this host"), NotImplementedError("no way to tell")):
        inner.verify_error = error
        with pytest.raises(type(error)) as raised:
            await instance.verify_host_key(key, None)
        assert raised.value is error
    assert cloud.calls == ["create"]  # verification is no cloud call of ours


async def test_set_tags_and_destroy_share_the_other_hold_off(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    instance = await create(wrapped)
    cloud.errors["set_tags"].append(rate_limit(clock, 10))
    with pytest.raises(RateLimitError):
        await instance.set_tags({"a": "b"})
    async with anyio.create_task_group() as tg:
        tg.start_soon(instance.destroy)
        tg.start_soon(instance.set_tags, {"a": "c"})
        await settle()
        await create(wrapped)  # creates are not held off
        assert cloud.calls == ["create", "set_tags", "create"]
        await clock.advance(10)
    assert sorted(cloud.calls) == ["create", "create", "destroy", "set_tags", "set_tags"]


async def test_instance_quota_group_delegates(cloud: ScriptedCloud, clock: FakeClock) -> None:
    wrapped = wrap(cloud, clock)
    assert wrapped.instance_quota_group(B1) == "b"
    assert wrapped.wrapped is cloud


async def test_stop_stops_the_wrapped_set(cloud: ScriptedCloud, clock: FakeClock) -> None:
    async with wrap(cloud, clock) as wrapped:
        assert isinstance(wrapped, cloudvm.InstanceSet)
        instance = await create(wrapped)
    assert cloud.stopped
    with pytest.raises(RuntimeError, match="stopped"):
        await create(wrapped)
    with pytest.raises(RuntimeError, match="stopped"):
        await instance.destroy()
    await wrapped.stop()  # twice is harmless
    assert cloud.calls == ["create"]


async def test_a_waiter_finds_the_set_stopped_when_it_wakes(
    cloud: ScriptedCloud, clock: FakeClock
) -> None:
    wrapped = wrap(cloud, clock)
    cloud.errors["instances"].append(rate_limit(clock, 10))
    with pytest.raises(RateLimitError):
        await wrapped.instances()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, results, wrapped.instances)
        await settle()
        await wrapped.stop()
        await clock.advance(10)
    assert isinstance(results[0], RuntimeError)
    assert cloud.calls == ["instances"]


def test_default_logger_and_policy(cloud: ScriptedCloud) -> None:
    wrapped = cloudvm.resilient(cloud)
    assert isinstance(wrapped, ResilientInstanceSet)
    assert wrapped._logger is logging.getLogger("cloudvm.resilient")
    assert "ResiliencePolicy(" in repr(wrapped)
