"""HostedDriver: a host behind every instance the wrapped driver creates."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import asyncssh
import pytest

import cloudvm
from cloudvm import InitCommand, Instance, InstanceSet, SSHExecutor
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import (
    FakeCloud,
    FakeInstance,
    HostBoot,
    HostedDriver,
    HostedInstance,
    IMDSv2Service,
)

from ..support import processes_mentioning, wait_until
from .conftest import IMAGE, LOG, SET_ID, SMALL, fake_boot


async def create(
    instance_set: InstanceSet, key: asyncssh.SSHKey | None, init: str = ""
) -> Instance:
    return await instance_set.create(SMALL, IMAGE, {"k": "v"}, InitCommand(init), key)


async def test_create_boots_a_host_that_runs_the_init_script_once(
    hosted: HostedDriver, hosted_set: InstanceSet, cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    instance = await create(hosted_set, client_key, init="echo booted >> boot.log")
    host = hosted.host(instance.id)
    assert host is not None
    assert instance.address == host.address != ""
    assert (host.workdir / "boot.log").read_text() == "booted\n"
    async with SSHExecutor(instance, signers=[client_key]) as executor:
        assert await executor.execute("cat boot.log") == (b"booted\n", b"")
    assert host.commands == ["cat boot.log"]
    own = cloud.ssh_server(instance.id)
    assert own is not None and own.commands == []  # the driver's own server saw nothing
    assert isinstance(instance, HostedInstance)
    assert isinstance(instance.instance, FakeInstance)
    assert (instance.id, str(instance), instance.tags) == (
        instance.instance.id,
        instance.id,
        {"k": "v"},
    )
    assert instance.remote_user == "worker"


async def test_the_host_authorises_only_the_public_key_for_the_remote_user(
    hosted: HostedDriver, hosted_set: InstanceSet, client_key: asyncssh.SSHKey
) -> None:
    instance = await create(hosted_set, client_key)
    host = hosted.host(instance.id)
    assert host is not None
    for user, key in [
        ("worker", asyncssh.generate_private_key("ssh-ed25519")),
        ("root", client_key),
    ]:
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(
                "127.0.0.1", host.port, username=user, client_keys=[key],
                known_hosts=None, agent_path=None, config=None,
            )  # fmt: skip


async def test_verification_is_the_drivers_own_and_refuses_a_wrong_secret(
    cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    async def forged(instance: Instance) -> HostBoot:
        return HostBoot(metadata=IMDSv2Service(instance.id, lambda: {SECRET_TAG: "forged"}))

    async with HostedDriver(cloud.driver, forged) as hosted:
        instance_set = await hosted.instance_set({}, SET_ID, {}, LOG)
        instance = await create(instance_set, client_key)
        async with SSHExecutor(instance, signers=[client_key]) as executor:
            with pytest.raises(cloudvm.HostKeyError):
                await executor.execute("touch ran")
        host = hosted.host(instance.id)
        assert host is not None and host.commands == []
        await instance_set.stop()


async def test_listings_report_hosts_and_hostless_instances_have_no_address(
    hosted: HostedDriver, hosted_set: InstanceSet, cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    with_host = await create(hosted_set, client_key)
    bare_set = await cloud.instance_set(SET_ID)  # the same set, not through the wrapper
    without = await create(bare_set, None)
    listed = {i.id: i for i in await hosted_set.instances()}
    assert set(listed) == {with_host.id, without.id}
    assert all(isinstance(i, HostedInstance) for i in listed.values())
    host = hosted.host(with_host.id)
    assert host is not None and listed[with_host.id].address == host.address
    assert listed[without.id].address == ""
    assert [i.id for i in await hosted_set.instances({"k": "v", "x": "y"})] == []
    assert hosted_set.instance_quota_group(SMALL) == bare_set.instance_quota_group(SMALL)
    await bare_set.stop()


async def test_destroy_destroys_the_instance_then_halts_its_host(
    hosted: HostedDriver, hosted_set: InstanceSet, cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    instance = await create(hosted_set, client_key)
    host = hosted.host(instance.id)
    assert host is not None
    port = host.port
    await instance.destroy()
    assert hosted.host(instance.id) is None
    assert instance.address == ""
    assert cloud.instance_ids() == []
    with pytest.raises(OSError, match=r"refused|connect"):
        await anyio.connect_tcp("127.0.0.1", port)
    await instance.destroy()  # a no-op, as the driver's


async def test_hosts_outlive_their_set_and_aclose_halts_them(
    cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    async def boot(instance: Instance) -> HostBoot:
        return await fake_boot(cloud, instance)

    hosted = HostedDriver(cloud.driver, boot)
    async with await hosted.instance_set({}, SET_ID, {}, LOG) as first:
        instance = await create(first, client_key)
    # The set stopped; the instance and its host run on, and a new set sees it.
    async with await hosted.instance_set({}, SET_ID, {}, LOG) as again:
        (listed,) = await again.instances()
        async with SSHExecutor(listed, signers=[client_key]) as executor:
            assert await executor.execute("echo up") == (b"up\n", b"")
    await hosted.aclose()
    assert hosted.hosts == {}
    assert cloud.instance_ids() == [instance.id]  # hosts halt; instances are the cloud's
    await hosted.aclose()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        await hosted.instance_set({}, SET_ID, {}, LOG)


async def test_a_failing_boot_fails_create_and_leaves_no_host(
    cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    async def broken(instance: Instance) -> HostBoot:
        raise LookupError(f"no user data for {instance.id}")

    async with HostedDriver(cloud.driver, broken) as hosted:
        instance_set = await hosted.instance_set({}, SET_ID, {}, LOG)
        with pytest.raises(LookupError):
            await create(instance_set, client_key)
        assert hosted.hosts == {}
        # As after any failed create, the instance may exist: here it does.
        (listed,) = await instance_set.instances({"k": "v"})
        assert listed.address == ""
        await listed.destroy()
        assert cloud.instance_ids() == []
        await instance_set.stop()


async def test_a_failing_init_script_still_boots_the_host(
    hosted: HostedDriver, hosted_set: InstanceSet, client_key: asyncssh.SSHKey
) -> None:
    instance = await create(hosted_set, client_key, init="echo half > half.out; exit 3")
    host = hosted.host(instance.id)
    assert host is not None
    assert (host.workdir / "half.out").read_text() == "half\n"
    async with SSHExecutor(instance, signers=[client_key]) as executor:
        assert await executor.execute("echo up") == (b"up\n", b"")


def open_pipes() -> int:
    """How many pipes this process holds open."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd).startswith("pipe:"))


def _link(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


async def test_a_create_cancelled_while_booting_leaves_its_host_owned(
    cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    # A long sleep no other test run on the machine sleeps.
    sleep_for = f"{60 + secrets.randbelow(10**6) / 10**6:.6f}"

    async def slow(instance: Instance) -> HostBoot:
        booted = await fake_boot(cloud, instance)
        return HostBoot(init_script=f"sleep {sleep_for}", metadata=booted.metadata)

    pipes_before = open_pipes()
    async with HostedDriver(cloud.driver, slow) as hosted:
        instance_set = await hosted.instance_set({}, SET_ID, {}, LOG)
        with anyio.move_on_after(20) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(create, instance_set, client_key)
                while not hosted.hosts:  # noqa: ASYNC110 - the host table is another task's
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        # the cancelled init script is gone with its whole group, and so are
        # its pipes (a grandchild used to hold them open, unclosed)
        # (killed at once; the kernel and the loop finish the job in a moment)
        await wait_until(
            lambda: not processes_mentioning(f"sleep {sleep_for}") and open_pipes() <= pipes_before,
            timeout=30,
        )
        (instance,) = await instance_set.instances()
        host = hosted.host(instance.id)
        assert host is not None and instance.address == host.address
        await instance.destroy()
        assert hosted.hosts == {}
        assert cloud.instance_ids() == []
        await instance_set.stop()
