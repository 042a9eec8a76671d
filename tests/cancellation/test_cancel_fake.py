"""Cancelling create, set_tags and destroy at each suspension point, on the
fake cloud (with and without SSH servers behind its instances) and through
``resilient``: afterwards only fully tagged instances exist, none with mixed
tags, and no server, socket or temporary directory is left."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import cloudvm
from cloudvm import InitCommand, Instance, InstanceSet
from cloudvm.testing import CancelBy, FakeCloud, cancel_at_each_suspension

from ..fake._util import IMAGE, SET_A, SMALL
from ..support import open_sockets

OLD = {"job": "fuzz", "phase": "old"}
NEW = {"job": "fuzz", "phase": "new", "extra": "x"}


@pytest.fixture(params=[False, True], ids=["no-ssh", "ssh"])
async def cloud(request: pytest.FixtureRequest, private_tmp: Path) -> AsyncIterator[FakeCloud]:
    async with FakeCloud({"ssh": request.param, "rate_limits": None}) as fake_cloud:
        yield fake_cloud
    assert await entries(private_tmp) == set(), "a test server's work dir was left behind"


@pytest.fixture(params=[False, True], ids=["plain", "resilient"])
async def instance_set(
    request: pytest.FixtureRequest, cloud: FakeCloud
) -> AsyncIterator[InstanceSet]:
    inner = await cloud.instance_set(SET_A)
    async with cloudvm.resilient(inner) if request.param else inner as iset:
        yield iset


async def entries(path: Path) -> set[Path]:
    # Off the loop: these checks run inside the fuzz harness, which is cloudvm
    # code, so a blocking call here would trip the blocking-call detector.
    return await anyio.to_thread.run_sync(lambda: set(path.iterdir()))


async def sockets_closed(baseline: int) -> None:
    with anyio.fail_after(10):
        while await anyio.to_thread.run_sync(open_sockets) > baseline:  # noqa: ASYNC110
            await anyio.sleep(0.01)  # nothing to wait on: sockets close in asyncssh


async def check_consistent(cloud: FakeCloud, iset: InstanceSet, private_tmp: Path) -> None:
    """Every instance is whole: tagged as asked, listed, and (with SSH) backed
    by a running server that owns a work dir; no other work dir exists."""
    listed = {i.id: i for i in await iset.instances()}
    assert sorted(listed) == sorted(cloud.instance_ids(SET_A))
    for instance in listed.values():
        assert instance.tags in (OLD, NEW), instance.tags
    workdirs = set()
    for instance_id in listed:
        server = cloud.ssh_server(instance_id)
        if server is not None:
            assert server.port, f"{instance_id}: its server never finished starting"
            workdirs.add(server.workdir)
    assert await entries(private_tmp) == workdirs


async def destroy_all(iset: InstanceSet, cloud: FakeCloud, sockets: int) -> None:
    for instance in await iset.instances():
        await instance.destroy()
    assert cloud.instance_ids() == []
    await sockets_closed(sockets)


async def fuzz(
    operation: Callable[[], Awaitable[object]],
    by: CancelBy,
    check: Callable[[], Awaitable[None]],
    reset: Callable[[], Awaitable[None]],
) -> int:
    async def after_each(point: int, completed: bool) -> None:
        await check()
        await reset()

    await reset()
    return await cancel_at_each_suspension(operation, by=by, after_each=after_each)


async def make(iset: InstanceSet) -> Instance:
    return await iset.create(SMALL, IMAGE, OLD, InitCommand("echo hi > init.out"), None)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_create_leaves_only_whole_instances(
    cloud: FakeCloud, instance_set: InstanceSet, private_tmp: Path, by: CancelBy
) -> None:
    sockets = open_sockets()
    cancelled = await fuzz(
        lambda: make(instance_set),
        by,
        check=lambda: check_consistent(cloud, instance_set, private_tmp),
        reset=lambda: destroy_all(instance_set, cloud, sockets),
    )
    assert cancelled >= 1


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_set_tags_leaves_old_or_new_tags(
    cloud: FakeCloud, instance_set: InstanceSet, private_tmp: Path, by: CancelBy
) -> None:
    sockets = open_sockets()
    current: list[Instance] = []

    async def reset() -> None:
        await destroy_all(instance_set, cloud, sockets)
        current[:] = [await make(instance_set)]

    cancelled = await fuzz(
        lambda: current[0].set_tags(NEW),
        by,
        check=lambda: check_consistent(cloud, instance_set, private_tmp),
        reset=reset,
    )
    assert cancelled >= 1
    await destroy_all(instance_set, cloud, sockets)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_destroy_leaves_the_instance_whole_or_gone(
    cloud: FakeCloud, instance_set: InstanceSet, private_tmp: Path, by: CancelBy
) -> None:
    sockets = open_sockets()
    current: list[Instance] = []

    async def reset() -> None:
        await destroy_all(instance_set, cloud, sockets)
        current[:] = [await make(instance_set)]

    await fuzz(
        lambda: current[0].destroy(),
        by,
        check=lambda: check_consistent(cloud, instance_set, private_tmp),
        reset=reset,
    )
    await destroy_all(instance_set, cloud, sockets)


async def test_a_closed_cloud_leaves_no_server_behind(private_tmp: Path) -> None:
    async with FakeCloud({"ssh": True, "rate_limits": None}) as cloud:
        iset = await cloud.instance_set(SET_A)
        for _ in range(3):
            await make(iset)
        assert len(await entries(private_tmp)) == 3
    assert await entries(private_tmp) == set()
