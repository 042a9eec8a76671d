"""Instances backed by real in-process SSH servers, proven through metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from cloudvm import (
    ExecutorTarget,
    HostKeyError,
    InitCommand,
    Instance,
    InstanceSet,
    SSHExecutor,
)
from cloudvm.testing import FAKE_DRIVER, FakeCloud, FakeInstanceSet, RedirectedTarget

from ._util import IMAGE, LOG, SET_A, SMALL


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def ssh_cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud({"ssh": True, "rate_limits": None, "remote_user": "worker"}) as cloud:
        yield cloud


async def create_reachable(
    instance_set: InstanceSet, key: asyncssh.SSHKey, init: str = ""
) -> Instance:
    return await instance_set.create(SMALL, IMAGE, {"k": "v"}, InitCommand(init), key)


async def test_executor_verifies_the_host_through_metadata_and_runs(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    instance_set = await ssh_cloud.instance_set(SET_A)
    instance = await create_reachable(instance_set, client_key, init="echo booted > init.out")
    assert instance.address.startswith("127.0.0.1:")
    async with SSHExecutor(instance, signers=[client_key]) as executor:
        stdout, _ = await executor.execute("cat init.out; echo $((6 * 7))")
    assert stdout == b"booted\n42\n"
    server = ssh_cloud.ssh_server(instance.id)
    assert server is not None
    assert server.commands == ["cat init.out; echo $((6 * 7))"]


async def test_executor_aimed_at_a_with_b_address_runs_nothing(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    instance_set = await ssh_cloud.instance_set(SET_A)
    a = await create_reachable(instance_set, client_key)
    b = await create_reachable(instance_set, client_key)
    target: ExecutorTarget = RedirectedTarget(a, b.address)
    async with SSHExecutor(target, signers=[client_key]) as executor:
        with pytest.raises(HostKeyError):
            await executor.execute("touch pwned")
    server_b = ssh_cloud.ssh_server(b.id)
    assert server_b is not None
    assert server_b.commands == []
    assert not (server_b.workdir / "pwned").exists()


async def test_without_ssh_verification_is_not_implemented() -> None:
    cloud = FakeCloud({"rate_limits": None})
    instance_set = await cloud.instance_set(SET_A)
    instance = await create_reachable(instance_set, asyncssh.generate_private_key("ssh-ed25519"))
    with pytest.raises(NotImplementedError):
        await instance.verify_host_key(asyncssh.generate_private_key("ssh-ed25519"), None)
    assert cloud.ssh_server(instance.id) is None


async def test_destroy_and_close_stop_every_server(
    client_key: asyncssh.SSHKey,
) -> None:
    cloud = FakeCloud({"ssh": True, "rate_limits": None})
    instance_set = await cloud.instance_set(SET_A)
    doomed = await create_reachable(instance_set, client_key)
    kept = await create_reachable(instance_set, client_key)
    servers = [cloud.ssh_server(doomed.id), cloud.ssh_server(kept.id)]
    assert servers[0] is not None
    assert servers[1] is not None
    workdirs: list[Path] = [server.workdir for server in servers if server is not None]
    async with SSHExecutor(kept, signers=[client_key]) as executor:
        await executor.execute("true")
        await doomed.destroy()
        assert not workdirs[0].exists()
        assert servers[1].open_connections == 1
        await cloud.close()
    assert servers[1].open_connections == 0
    assert not workdirs[1].exists()
    assert cloud.ssh_server(kept.id) is None


async def test_named_ssh_cloud_is_closed_by_close_named_clouds(
    client_key: asyncssh.SSHKey,
) -> None:
    instance_set = await FAKE_DRIVER.instance_set(
        {"cloud": "ssh-named", "ssh": True, "rate_limits": None}, SET_A, {}, LOG
    )
    assert isinstance(instance_set, FakeInstanceSet)
    instance = await create_reachable(instance_set, client_key)
    server = instance_set.cloud.ssh_server(instance.id)
    assert server is not None
    workdir = server.workdir
    from cloudvm.testing import close_named_clouds

    await close_named_clouds()
    assert instance_set.cloud.is_closed
    assert not workdir.exists()
