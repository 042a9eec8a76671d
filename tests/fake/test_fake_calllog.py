"""The call log and the hold gate."""

from __future__ import annotations

import anyio
import prometheus_client
import pytest

from cloudvm import RateLimitError
from cloudvm.testing import CallRecord, FakeCloud, InjectedError, ManualClock

from ..support import wait_until
from ._util import SET_A, SMALL, create, manual_cloud


async def test_call_log_records_operation_arguments_times_and_outcome() -> None:
    clock = ManualClock(start=100.0)
    cloud = FakeCloud(
        {"rate_limits": {"list": {"burst": 1, "refill": 1}}, "latency": {"set_tags": 0.5}},
        clock=clock,
    )
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set, tags={"a": "1"})
    clock.advance(1)
    await instance_set.instances({"a": "1"})
    with pytest.raises(RateLimitError):
        await instance_set.instances()

    async def retag() -> None:
        await instance.set_tags({"b": "2"})

    async with anyio.create_task_group() as tg:
        tg.start_soon(retag)
        await wait_until(lambda: clock.sleepers == 1)
        clock.advance(0.5)
    await instance.destroy()

    assert cloud.calls == [
        CallRecord(
            "create",
            SET_A,
            {
                "instance_type": SMALL.provider_type,
                "image_id": "ami-fake",
                "tags": {"a": "1"},
                "public_key": False,
            },
            100.0,
            100.0,
            100.0,
            "ok",
            instance.id,
        ),
        CallRecord("instances", SET_A, {"tags": {"a": "1"}}, 101.0, 101.0, 101.0, "ok"),
        CallRecord("instances", SET_A, {"tags": {}}, 101.0, 101.0, 101.0, "RateLimitError"),
        CallRecord(
            "set_tags",
            SET_A,
            {"instance_id": instance.id, "tags": {"b": "2"}},
            101.0,
            101.0,
            101.5,
            "ok",
            instance.id,
        ),
        CallRecord(
            "destroy", SET_A, {"instance_id": instance.id}, 101.5, 101.5, 101.5, "ok", instance.id
        ),
    ]
    assert isinstance(cloud.calls[2].error, RateLimitError)
    cloud.clear_calls()
    assert cloud.calls == []


async def test_gate_holds_calls_until_released() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    cloud.hold("create")
    await instance_set.instances()  # other operations pass
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(create, instance_set)
        await cloud.wait_held(3)
        assert cloud.held == 3
        assert cloud.instance_ids() == []  # nothing reached the cloud
        assert [call.operation for call in cloud.calls] == ["instances"]
        cloud.release()
    assert cloud.held == 0
    assert len(cloud.instance_ids()) == 3


async def test_a_call_cancelled_at_the_gate_never_arrives() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    cloud.hold()
    with anyio.move_on_after(0.05):
        await create(instance_set)
    assert cloud.held == 0
    assert cloud.instance_ids() == []
    (call,) = cloud.calls
    assert call.outcome == "cancelled"
    assert call.arrived is None
    cloud.release()
    await create(instance_set)


async def test_closing_the_cloud_releases_held_calls_with_an_error() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    cloud.hold()
    errors: list[BaseException] = []

    async def list_all() -> None:
        try:
            await instance_set.instances()
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(list_all)
        await cloud.wait_held(1)
        await cloud.close()
    assert len(errors) == 1


def test_hold_rejects_unknown_operations() -> None:
    with pytest.raises(ValueError, match="reboot"):
        FakeCloud().hold("reboot")


async def test_metrics_count_calls_by_outcome() -> None:
    registry = prometheus_client.CollectorRegistry()
    cloud, _ = manual_cloud(failure_rates={"destroy": 1.0})
    instance_set = await cloud.instance_set(SET_A, registry=registry)
    instance = await create(instance_set)
    await instance_set.instances()
    with pytest.raises(InjectedError):
        await instance.destroy()
    sample = registry.get_sample_value
    for operation, outcome in (("create", "ok"), ("instances", "ok"), ("destroy", "InjectedError")):
        labels = {"driver": "fake", "operation": operation, "outcome": outcome}
        assert sample("cloudvm_api_calls_total", labels) == 1, operation
