"""Lost responses, failure rates, eventual consistency, stale tags, delays."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from cloudvm import CloudError
from cloudvm.testing import InjectedError, LostResponseError

from ..support import wait_until
from ._util import SET_A, create, fake, ids, manual_cloud


async def test_lost_response_creates_the_instance_but_raises() -> None:
    cloud, _ = manual_cloud(lost_responses={"create": 1.0})
    instance_set = await cloud.instance_set(SET_A)
    with pytest.raises(LostResponseError) as caught:
        await create(instance_set, tags={"job": "1"})
    assert isinstance(caught.value, CloudError)
    (listed,) = await instance_set.instances({"job": "1"})
    (call, _) = cloud.calls
    assert call.outcome == "LostResponseError"
    assert call.instance_id == listed.id


async def test_lost_destroy_response_still_destroys() -> None:
    cloud, _ = manual_cloud(lost_responses={"destroy": 1.0})
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set)
    with pytest.raises(LostResponseError):
        await instance.destroy()
    assert cloud.instance_ids() == []


async def _creates_with_seed(seed: int) -> list[str]:
    cloud, _ = manual_cloud(failure_rates={"create": 0.5}, seed=seed)
    instance_set = await cloud.instance_set(SET_A)
    for _ in range(40):
        with contextlib.suppress(InjectedError):
            await create(instance_set)
    assert {c.error.code for c in cloud.calls if isinstance(c.error, InjectedError)} == {
        "FakeInjectedFailure"
    }
    assert len(cloud.instance_ids()) == sum(c.outcome == "ok" for c in cloud.calls)
    return [call.outcome for call in cloud.calls]


async def test_failure_rate_is_deterministic_with_a_seed() -> None:
    first = await _creates_with_seed(7)
    assert first == await _creates_with_seed(7)
    assert first != await _creates_with_seed(8)
    assert 5 < first.count("InjectedError") < 35
    assert set(first) == {"ok", "InjectedError"}


async def test_failed_destroy_and_set_tags_change_nothing() -> None:
    cloud, _ = manual_cloud(failure_rates={"destroy": 1.0, "set_tags": 1.0})
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set, tags={"v": "1"})
    with pytest.raises(InjectedError):
        await instance.destroy()
    with pytest.raises(InjectedError):
        await instance.set_tags({"v": "2"})
    (listed,) = await instance_set.instances()
    assert listed.tags == {"v": "1"}
    assert instance.tags == {"v": "1"}


async def test_new_instances_appear_in_listings_after_the_listing_delay() -> None:
    cloud, clock = manual_cloud(listing_delay=3.0)
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set, tags={"k": "v"})
    assert cloud.instance_ids() == [instance.id]  # it exists ...
    assert await instance_set.instances() == []  # ... but listings lag
    clock.advance(2.9)
    assert await instance_set.instances({"k": "v"}) == []
    clock.advance(0.1)
    assert ids(await instance_set.instances({"k": "v"})) == [instance.id]


async def test_listings_show_stale_tags_for_the_tag_delay() -> None:
    cloud, clock = manual_cloud(tag_delay=5.0)
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set, tags={"state": "idle"})
    snapshot = fake((await instance_set.instances())[0])
    await instance.set_tags({"state": "busy", "job": "9"})
    assert instance.tags == {"state": "busy", "job": "9"}
    assert snapshot.tags == {"state": "idle"}  # an old object keeps its snapshot
    clock.advance(4)
    assert ids(await instance_set.instances({"state": "idle"})) == [instance.id]
    assert await instance_set.instances({"state": "busy"}) == []
    clock.advance(1)
    assert await instance_set.instances({"state": "idle"}) == []
    (listed,) = await instance_set.instances({"state": "busy"})
    assert listed.tags == {"state": "busy", "job": "9"}


async def test_address_is_empty_until_the_boot_delay_passes() -> None:
    cloud, clock = manual_cloud(boot_delay=10.0)
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set)
    assert instance.address == ""
    clock.advance(9.5)
    (listed,) = await instance_set.instances()
    assert listed.address == ""
    clock.advance(0.5)
    (listed,) = await instance_set.instances()
    assert listed.address.startswith("198.18.")
    assert instance.address == ""  # a snapshot, as the contract allows


async def test_latency_holds_the_answer_and_cancelling_it_keeps_the_instance() -> None:
    cloud, clock = manual_cloud(latency={"create": 2.0, "instances": 1.0})
    instance_set = await cloud.instance_set(SET_A)
    finished: list[str] = []

    async def create_one() -> None:
        finished.append((await create(instance_set)).id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(create_one)
        await wait_until(lambda: clock.sleepers == 1)
        assert clock.sleepers == 1
        (created,) = cloud.instance_ids()  # the cloud acted; the answer travels
        assert finished == []
        clock.advance(2.0)
    assert finished == [created]

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(create_one)
            await wait_until(lambda: clock.sleepers == 1)
            scope.cancel()
    assert len(cloud.instance_ids()) == 2  # cancelled, yet created and tagged
    assert cloud.calls[-1].outcome == "cancelled"
    assert cloud.calls[-1].instance_id == cloud.instance_ids()[-1]
    assert clock.sleepers == 0
