"""Cancelling create, set_tags and destroy anywhere, by asyncio or by anyio.

Each operation is cancelled once at each of its suspension points
(``cloudvm.testing.cancel_at_each_suspension``), with ``Task.cancel()`` (what
``asyncio.wait_for`` and ``asyncio.timeout`` do) and with an anyio scope.
After every run the local Compute API holds only fully tagged instances of
the set, whose derived labels agree with their metadata tags, and no call of
the cancelled run is still working in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from cloudvm_gce._tags import TAGS_ITEM, decode_tags, labels_for
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE, ZONES

import cloudvm
from cloudvm import InitCommand, InstanceTags
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG
from cloudvm.testing import CancelBy, cancel_at_each_suspension

SET_ID = "set-one"  # the gce_set fixture's
OLD: InstanceTags = {"role": "worker", "gen": "1"}
NEW: InstanceTags = {"role": "worker", "gen": "2", "extra": "x"}
BOTH_WAYS = pytest.mark.parametrize("by", [CancelBy.TASK, CancelBy.ANYIO], ids=["task", "anyio"])


def _tags_of(raw: dict[str, Any]) -> InstanceTags:
    """The tags of a raw instance of the fake, after checking that it is fully
    tagged: set id, secret, tags item, and labels derived from exactly those."""
    items = {i["key"]: i.get("value", "") for i in raw["metadata"]["items"]}
    assert items.get(SET_ID_TAG) == SET_ID
    assert items.get(SECRET_TAG)
    tags = decode_tags(items.get(TAGS_ITEM))
    assert tags is not None, "an instance without readable tags"
    assert raw["labels"] == labels_for(SET_ID, tags), "labels and metadata tags disagree"
    return tags


def _in_flight(iset: cloudvm.InstanceSet) -> int:
    return int(iset._api.calls_in_flight)  # type: ignore[attr-defined]


async def _destroy_all(iset: cloudvm.InstanceSet, fake: FakeCompute) -> None:
    for inst in await iset.instances():
        await inst.destroy()
    assert fake.instances == {}


@BOTH_WAYS
async def test_create_cancelled_anywhere_leaves_only_fully_tagged_instances(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute, by: CancelBy
) -> None:
    # The first zone has no capacity: the runs also cross the failover.
    fake_gce.exhausted_zones.add(ZONES[0])

    async def after_each(point: int, completed: bool) -> None:
        assert _in_flight(gce_set) == 0, f"a call still runs after cancellation {point}"
        for raw in fake_gce.instances.values():
            assert _tags_of(raw) == OLD
        if completed:
            assert [i.tags for i in await gce_set.instances(OLD)] == [OLD]
        await _destroy_all(gce_set, fake_gce)

    cancelled = await cancel_at_each_suspension(
        lambda: gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None),
        by=by,
        after_each=after_each,
    )
    assert cancelled >= 2


@BOTH_WAYS
async def test_set_tags_cancelled_anywhere_leaves_old_or_new_tags_never_a_mix(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute, by: CancelBy
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)

    async def after_each(point: int, completed: bool) -> None:
        assert _in_flight(gce_set) == 0, f"a call still runs after cancellation {point}"
        (raw,) = fake_gce.instances.values()
        tags = _tags_of(raw)
        assert tags in (OLD, NEW)
        assert inst.tags == tags, "the instance object and the cloud disagree"
        if completed:
            assert tags == NEW
        (found,) = await gce_set.instances(tags)
        assert found.id == inst.id
        other = OLD if tags == NEW else NEW
        assert await gce_set.instances(other) == []
        await inst.set_tags(OLD)  # the next run starts from the old tags

    cancelled = await cancel_at_each_suspension(
        lambda: inst.set_tags(NEW), by=by, after_each=after_each
    )
    assert cancelled >= 1
    await inst.destroy()


@BOTH_WAYS
async def test_destroy_cancelled_anywhere_leaves_the_instance_tagged_or_gone(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute, by: CancelBy
) -> None:
    current = [await gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)]

    async def after_each(point: int, completed: bool) -> None:
        assert _in_flight(gce_set) == 0, f"a call still runs after cancellation {point}"
        for raw in fake_gce.instances.values():
            assert _tags_of(raw) == OLD
        if completed:
            assert fake_gce.instances == {}
            return
        await _destroy_all(gce_set, fake_gce)
        current[0] = await gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)

    cancelled = await cancel_at_each_suspension(
        lambda: current[0].destroy(), by=by, after_each=after_each
    )
    assert cancelled >= 2


async def _cancel_while_unanswered(
    fake: FakeCompute, method: str, start: Callable[[], Awaitable[object]]
) -> None:
    """Run ``start()`` in a task, ``Task.cancel()`` it while the fake holds
    its ``method`` call unanswered, and check that the task ends (raising its
    cancellation) only after the answer: let go earlier, its caller's next
    listing could miss what the call then does."""
    gate = fake.hold(method)
    task = asyncio.ensure_future(start())
    try:
        with anyio.fail_after(30):
            await fake.wait_for_calls(method)
        task.cancel()
        for _ in range(50):  # let every ready task run; no time passes
            await asyncio.sleep(0)
        assert not task.done(), f"the cancelled call returned while its {method} was unanswered"
    finally:
        gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_create_cancelled_by_task_cancel_returns_only_after_its_insert(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    await _cancel_while_unanswered(
        fake_gce, "insert", lambda: gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)
    )
    assert _in_flight(gce_set) == 0
    (found,) = await gce_set.instances(OLD)
    await found.destroy()


async def test_a_destroy_cancelled_by_task_cancel_returns_only_after_its_delete(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)
    await _cancel_while_unanswered(fake_gce, "delete", inst.destroy)
    assert _in_flight(gce_set) == 0
    await _destroy_all(gce_set, fake_gce)


@pytest.mark.parametrize(
    ("method", "how", "left"),
    [
        ("setLabels", "refused", OLD),  # the metadata item is put back
        ("setMetadata", "lost", OLD),  # written without an answer, then put back
        ("setLabels", "lost", NEW),  # the labels were written after all: nothing to undo
    ],
)
async def test_set_tags_failing_half_way_leaves_the_old_or_the_new_tags(
    gce_set: cloudvm.InstanceSet,
    fake_gce: FakeCompute,
    method: str,
    how: str,
    left: InstanceTags,
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, OLD, InitCommand(""), None)
    fake_gce.op_steps = 0  # operations are done at once
    if how == "refused":
        fake_gce.fail(method, 403, "rateLimitExceeded", "slow down", domain="usageLimits")
    else:
        fake_gce.drop_response(method)  # processed, but the answer is lost
    with pytest.raises(cloudvm.CloudError):
        await inst.set_tags(NEW)
    (raw,) = fake_gce.instances.values()
    assert _tags_of(raw) == left
    assert inst.tags == left
    assert [i.id for i in await gce_set.instances(left)] == [inst.id]
    fake_gce.op_steps = 1
    await inst.destroy()
