"""``set_tags`` is two EC2 calls (CreateTags, then DeleteTags); whatever
happens between them, the instance ends with its old tags or its new ones,
never a mix of both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest
from cloudvm_ec2 import EC2InstanceSet
from ec2_hosts import user_tags_in_moto
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, eventually, itype

import cloudvm
from cloudvm.testing import CancelBy

OLD = {"a": "1", "b": "2"}  # "b" goes, "a" changes: both calls are needed
NEW = {"a": "9"}
NEW_WITH_ADDED = {"a": "9", "c": "3"}  # "c" is added: undoing needs DeleteTags


async def instance_with_old_tags(instance_set: EC2InstanceSet, world: World) -> cloudvm.Instance:
    return await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), OLD, cloudvm.InitCommand(""), None
    )


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_between_the_two_calls_ends_with_the_new_tags(
    by: CancelBy, make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    held = proxy.hold("CreateTags")

    async def cancel_once_held(cancel: Callable[[], object]) -> None:
        # CreateTags has reached EC2 when the caller is cancelled; EC2 then
        # applies it.
        assert await anyio.to_thread.run_sync(held.arrived.wait, 30)
        cancel()
        held.release()

    async with anyio.create_task_group() as group:
        if by is CancelBy.TASK:
            task = asyncio.ensure_future(instance.set_tags(NEW))
            group.start_soon(cancel_once_held, task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with anyio.CancelScope() as scope:
                group.start_soon(cancel_once_held, scope.cancel)
                await instance.set_tags(NEW)
            assert scope.cancelled_caught

    def create_tags_applied() -> bool:
        return bool(proxy.calls("CreateTags"))

    await eventually(lambda: anyio.to_thread.run_sync(create_tags_applied))
    assert user_tags_in_moto(instance.id) == NEW
    assert [i.tags for i in await instance_set.instances()] == [NEW]


async def test_a_throttled_delete_is_repeated_after_its_retry_time(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.fail("DeleteTags", "RequestLimitExceeded")
    await instance.set_tags(NEW)
    assert user_tags_in_moto(instance.id) == NEW
    first, second = proxy.calls("DeleteTags")
    assert first.answer == "error:RequestLimitExceeded" and second.answer == "moto"
    assert second.at - first.at >= 0.9  # EC2's hold-off (1 s at first) was honoured


async def test_a_delete_without_an_answer_is_repeated(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.lose_response("DeleteTags")
    await instance.set_tags(NEW)
    assert user_tags_in_moto(instance.id) == NEW
    assert [c.answer for c in proxy.calls("DeleteTags")] == ["lost", "moto"]


async def test_a_delete_throttled_past_the_timeout_is_undone(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, set_tags_timeout=2.0)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.fail("DeleteTags", "RequestLimitExceeded", times=None)
    with pytest.raises(cloudvm.RateLimitError):
        await instance.set_tags(NEW)
    assert user_tags_in_moto(instance.id) == OLD
    assert instance.tags == OLD
    assert [i.tags for i in await instance_set.instances()] == [OLD]


async def test_a_delete_refused_by_ec2_is_undone_at_once(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.fail("DeleteTags", "UnauthorizedOperation", "You are not authorized")
    with pytest.raises(cloudvm.CloudError, match="UnauthorizedOperation"):
        await instance.set_tags(NEW_WITH_ADDED)
    # The undo deleted the added key "c" and put back "a": the old tags.
    assert user_tags_in_moto(instance.id) == OLD
    assert len(proxy.calls("DeleteTags")) == 2
    assert len(proxy.calls("CreateTags")) == 2


async def test_when_neither_finishing_nor_undoing_works_the_error_says_so(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.fail("DeleteTags", "UnauthorizedOperation", "You are not authorized", times=None)
    with pytest.raises(cloudvm.CloudError, match="neither its old nor its new tags") as caught:
        await instance.set_tags(NEW_WITH_ADDED)
    assert "UnauthorizedOperation" in str(caught.value)


async def test_a_failed_first_call_changes_nothing_and_is_not_repeated(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    proxy.fail("CreateTags", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await instance.set_tags(NEW)
    assert user_tags_in_moto(instance.id) == OLD
    assert len(proxy.calls("CreateTags")) == 1 and proxy.calls("DeleteTags") == []


async def test_one_call_is_enough_when_no_key_goes(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    instance = await instance_with_old_tags(instance_set, world)
    await instance.set_tags({**OLD, "a": "5", "d": "4"})
    assert user_tags_in_moto(instance.id) == {**OLD, "a": "5", "d": "4"}
    [create] = proxy.calls("CreateTags")
    assert proxy.calls("DeleteTags") == []
    # Only what changed is sent.
    assert {v for k, v in create.params.items() if k.endswith(".Key")} == {"a", "d"}
    await instance.set_tags({"a": "5"})
    assert user_tags_in_moto(instance.id) == {"a": "5"}
    assert len(proxy.calls("CreateTags")) == 1 and len(proxy.calls("DeleteTags")) == 1
