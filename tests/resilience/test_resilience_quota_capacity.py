"""Quota and capacity errors from the fake cloud through the wrapper."""

from __future__ import annotations

import anyio
import pytest

from cloudvm import CapacityError, InstanceType, QuotaError

from ._sim import (
    LARGE,
    MEDIUM,
    SET,
    SMALL,
    DecisionLog,
    SimClock,
    calls_of,
    create,
    run_until,
    settle,
    sim_cloud,
    wrap,
)

QUOTA_HOLD = 60.0
CAPACITY_HOLD = 180.0
GROUPS = {"t3.small": "t3", "t3.medium": "t3", "m5.xlarge": "m5"}


async def test_quota_error_is_never_retried_and_ends_with_a_destroy() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, default_quota={"instances": 3})
    log = DecisionLog(clock)
    # Even a wrapper that retries rate limits must not retry a QuotaError.
    wrapped = wrap(
        await cloud.instance_set(SET),
        clock,
        log,
        retry_rate_limited=True,
        quota_hold=QUOTA_HOLD,
    )
    instances = [await create(wrapped) for _ in range(3)]
    with pytest.raises(QuotaError) as first:
        await create(wrapped)
    assert first.value.code == "InstanceLimitExceeded"
    assert len(calls_of(cloud, "create")) == 4

    refused: list[BaseException] = []

    async def refused_create() -> None:
        try:
            await create(wrapped, LARGE)  # another type: the quota is the account's
        except QuotaError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(refused_create)
    assert len(refused) == 5
    assert all(exc.__cause__ is first.value for exc in refused)
    clock.advance(QUOTA_HOLD - 0.001)
    with pytest.raises(QuotaError):
        await create(wrapped)
    assert len(calls_of(cloud, "create")) == 4  # every refusal without a cloud call

    await instances[0].destroy()  # room again: creates go through at once
    await create(wrapped)
    assert len(calls_of(cloud, "create")) == 5
    with pytest.raises(QuotaError):
        await create(wrapped)  # full again: the cloud says so, once
    assert [c.outcome for c in calls_of(cloud, "create")].count("QuotaError") == 2

    # Without a destroy, the quota is asked again once quota_hold has passed.
    clock.advance(QUOTA_HOLD)
    with pytest.raises(QuotaError):
        await create(wrapped)
    outcomes = [c.outcome for c in calls_of(cloud, "create")]
    assert outcomes.count("QuotaError") == 3
    assert len(outcomes) == 7
    assert [r.__dict__["decision"] for r in log.records].count("at_quota") == 3


@pytest.mark.parametrize(
    ("shortage", "refused", "allowed"),
    [
        pytest.param({"instance_types": ["t3.small"]}, [SMALL], [MEDIUM, LARGE], id="per-type"),
        pytest.param({"quota_groups": ["t3"]}, [SMALL, MEDIUM], [LARGE], id="per-quota-group"),
        pytest.param({"everywhere": True}, [SMALL, MEDIUM, LARGE], [], id="all-types"),
    ],
)
async def test_capacity_memory_refuses_then_expires_on_time(
    shortage: dict[str, object], refused: list[InstanceType], allowed: list[InstanceType]
) -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, quota_groups=GROUPS, capacity_shortage=shortage)
    wrapped = wrap(await cloud.instance_set(SET), clock, capacity_hold=CAPACITY_HOLD)
    with pytest.raises(CapacityError) as first:
        await create(wrapped, SMALL)
    assert len(cloud.calls) == 1
    for itype in allowed:
        await create(wrapped, itype)
    assert len(cloud.calls) == 1 + len(allowed)

    # The cloud has capacity again, but the wrapper remembers the shortage.
    cloud.configure(capacity_shortage={})
    clock.advance_to(CAPACITY_HOLD - 0.001)
    for itype in refused:
        with pytest.raises(CapacityError) as again:
            await create(wrapped, itype)
        assert again.value.__cause__ is first.value
        assert again.value.instance_type_specific is first.value.instance_type_specific
        assert again.value.quota_group_specific is first.value.quota_group_specific
    assert len(cloud.calls) == 1 + len(allowed)

    clock.advance_to(CAPACITY_HOLD)  # the memory ends exactly on time
    for itype in refused:
        await create(wrapped, itype)
    assert len(cloud.calls) == 1 + len(allowed) + len(refused)
    assert [c.outcome for c in cloud.calls].count("CapacityError") == 1


async def test_waiting_creates_learn_of_a_shortage_before_calling() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, rate_limits={"create": {"burst": 1, "refill": 0.5}})
    wrapped = wrap(await cloud.instance_set(SET), clock, retry_rate_limited=True)
    await create(wrapped)
    results: list[BaseException | None] = []

    async def caller() -> None:
        try:
            await create(wrapped)
            results.append(None)
        except CapacityError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(caller)
        await settle()  # one throttled, all four now wait out the hold-off
        cloud.configure(capacity_shortage={"everywhere": True})
        await run_until(clock, lambda: len(results) == 4)
    assert all(isinstance(r, CapacityError) for r in results)
    # The first waiter met the shortage; the others were refused without a call.
    assert [c.outcome for c in calls_of(cloud, "create")].count("CapacityError") == 1
