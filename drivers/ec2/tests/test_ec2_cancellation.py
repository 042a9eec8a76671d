"""Cancellation at every suspension point of ``create``, ``set_tags`` and
``destroy`` against moto, by ``Task.cancel()`` and by anyio scopes: after
each run only fully tagged instances of the set exist, none with mixed tags,
every key pair carries the shared tags, and no connection is left open."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import asyncssh
import pytest
from cloudvm_ec2 import EC2InstanceSet
from ec2_support import MakeSet, World, ec2_config, eventually, itype

import cloudvm
from cloudvm.driverkit import RESERVED_TAG_PREFIX, SECRET_TAG, SET_ID_TAG
from cloudvm.testing import CancelBy, cancel_at_each_suspension

SET_ID = "fuzz-set"
SHARED = {"cluster": "fuzz"}
OLD = {"a": "1", "b": "2"}
NEW = {"a": "9", "c": "3"}  # one value changed, one key added, one removed


def open_sockets() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def live_instances(world: World) -> list[dict[str, Any]]:
    """Every instance moto holds that is not terminated, whoever made it."""
    found = world.ec2.describe_instances()["Reservations"]
    return [
        i
        for r in found
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]


def tags_of(data: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in data.get("Tags", [])}


def assert_fully_tagged(world: World, *allowed: Mapping[str, str]) -> list[str]:
    """Every live instance is the set's, has its secret and exactly one of
    the ``allowed`` tag sets. Returns their ids."""
    ids = []
    for data in live_instances(world):
        tags = tags_of(data)
        assert tags.get(SET_ID_TAG) == SET_ID, tags
        assert tags.get(SECRET_TAG), tags
        user = {k: v for k, v in tags.items() if not k.startswith(RESERVED_TAG_PREFIX)}
        assert user in [dict(a) for a in allowed], f"{data['InstanceId']} has mixed tags {user}"
        ids.append(data["InstanceId"])
    return ids


def assert_key_pairs_tagged(world: World) -> None:
    for pair in world.ec2.describe_key_pairs()["KeyPairs"]:
        assert tags_of(pair) == SHARED, pair


def terminate_all(world: World) -> None:
    ids = [i["InstanceId"] for i in live_instances(world)]
    if ids:
        world.ec2.terminate_instances(InstanceIds=ids)


async def new_set(make_set: MakeSet) -> EC2InstanceSet:
    return await make_set(set_id=SET_ID, shared_tags=SHARED)


async def sockets_back_to(before: int) -> None:
    """Wait until the process holds no more sockets than ``before`` (the
    server side of a closed connection closes a moment later)."""

    async def closed() -> bool:
        return open_sockets() <= before

    await eventually(closed, timeout=30)


async def assert_no_connection_left(instance_set: EC2InstanceSet, before: int) -> None:
    await instance_set.stop()
    await sockets_back_to(before)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_create_cancelled_anywhere(by: CancelBy, make_set: MakeSet, world: World) -> None:
    before = open_sockets()
    instance_set = await new_set(make_set)
    key = asyncssh.generate_private_key("ssh-ed25519")
    tags = {"job": "7"}

    async def create() -> None:
        await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), tags, cloudvm.InitCommand("true"), key
        )

    async def after_each(point: int, completed: bool) -> None:
        assert_fully_tagged(world, tags)
        assert_key_pairs_tagged(world)
        # Each run starts afresh: no instance, no key pair, nothing known.
        terminate_all(world)
        for pair in world.ec2.describe_key_pairs()["KeyPairs"]:
            world.ec2.delete_key_pair(KeyName=pair["KeyName"])
        instance_set._key_names.clear()

    cancelled = await cancel_at_each_suspension(create, by=by, after_each=after_each)
    assert cancelled >= 3
    await assert_no_connection_left(instance_set, before)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_set_tags_cancelled_anywhere(by: CancelBy, make_set: MakeSet, world: World) -> None:
    before = open_sockets()
    instance_set = await new_set(make_set)
    instance = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), OLD, cloudvm.InitCommand(""), None
    )

    async def set_tags() -> None:
        await instance.set_tags(NEW)

    async def after_each(point: int, completed: bool) -> None:
        assert assert_fully_tagged(world, OLD, NEW) == [instance.id]
        # Back to the old tags for the next run.
        world.ec2.delete_tags(Resources=[instance.id], Tags=[{"Key": "c"}])
        world.ec2.create_tags(
            Resources=[instance.id], Tags=[{"Key": k, "Value": v} for k, v in OLD.items()]
        )

    cancelled = await cancel_at_each_suspension(set_tags, by=by, after_each=after_each)
    assert cancelled >= 3
    await assert_no_connection_left(instance_set, before)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_destroy_cancelled_anywhere(by: CancelBy, make_set: MakeSet, world: World) -> None:
    before = open_sockets()
    instance_set = await new_set(make_set)
    tags = {"job": "8"}

    async def new_instance() -> cloudvm.Instance:
        return await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), tags, cloudvm.InitCommand(""), None
        )

    current = [await new_instance()]

    async def destroy() -> None:
        await current[0].destroy()

    async def after_each(point: int, completed: bool) -> None:
        left = assert_fully_tagged(world, tags)
        assert left in ([], [current[0].id])
        if completed:
            assert left == []
        if not left:
            current[0] = await new_instance()

    cancelled = await cancel_at_each_suspension(destroy, by=by, after_each=after_each)
    assert cancelled >= 3
    terminate_all(world)
    await assert_no_connection_left(instance_set, before)


async def open_set(world: World) -> cloudvm.InstanceSet:
    return await cloudvm.load_driver("ec2").instance_set(
        ec2_config(world), cloudvm.InstanceSetID(SET_ID), SHARED, logging.getLogger("test.ec2")
    )


@pytest.mark.parametrize("by", list(CancelBy))
async def test_opening_a_set_cancelled_anywhere_leaves_no_client(
    by: CancelBy, world: World, no_unclosed_sessions: None
) -> None:
    before = open_sockets()
    opened: list[cloudvm.InstanceSet] = []

    async def open_and_use() -> None:
        instance_set = await open_set(world)
        opened.append(instance_set)

    async def after_each(point: int, completed: bool) -> None:
        assert len(opened) == (1 if completed else 0)
        for instance_set in opened:
            await instance_set.stop()
        await sockets_back_to(before)

    assert await cancel_at_each_suspension(open_and_use, by=by, after_each=after_each) >= 1


@pytest.mark.parametrize("by", list(CancelBy))
async def test_stop_cancelled_anywhere_still_closes_the_client(
    by: CancelBy, world: World, no_unclosed_sessions: None
) -> None:
    before = open_sockets()
    current = [await open_set(world)]
    await current[0].instances()  # a pooled connection to close

    async def stop() -> None:
        await current[0].stop()

    async def after_each(point: int, completed: bool) -> None:
        await sockets_back_to(before)
        current[0] = await open_set(world)
        await current[0].instances()

    await cancel_at_each_suspension(stop, by=by, after_each=after_each)
    await current[0].stop()
    await sockets_back_to(before)
