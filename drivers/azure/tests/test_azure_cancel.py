"""Cancelling create at each await that reaches Azure leaves only tagged
resources, which destroy or the sweep remove."""

from __future__ import annotations

import logging

import anyio
import cloudvm_azure
import pytest
from azure_fake_arm import DISK, NIC, VM, FakeARM
from azure_support import SET_ID, FakeCredential, make_config, wait_until
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

from cloudvm import InitCommand, InstanceType
from cloudvm.driverkit import SET_ID_TAG

WITH_SCRATCH = InstanceType("s", "Standard_D2s_v5", 2, 8 << 30, 10 << 30, 0, 10 << 30, 0.1)


@pytest.mark.parametrize(
    ("method", "path", "skip"),
    [
        pytest.param("PUT", "/networkInterfaces/", 0, id="nic-put"),
        pytest.param("GET", "Microsoft.Network/locations/.*/operations/", 0, id="nic-poll"),
        pytest.param("GET", "/networkInterfaces/[^/]+$", 0, id="nic-final-get"),
        pytest.param("PUT", "/virtualMachines/", 0, id="vm-put"),
        pytest.param("GET", "Microsoft.Compute/locations/.*/operations/", 0, id="vm-poll"),
        pytest.param("GET", "/virtualMachines/[^/]+$", 0, id="vm-final-get"),
        pytest.param("PATCH", "/disks/", 0, id="os-disk-tag"),
        pytest.param("PATCH", "/disks/", 1, id="scratch-disk-tag"),
        pytest.param("GET", "Microsoft.Compute/locations/.*/operations/", 2, id="disk-tag-poll"),
    ],
)
async def test_cancelled_create_leaves_only_tagged_resources(
    arm: FakeARM,
    credential: FakeCredential,
    logger: logging.Logger,
    method: str,
    path: str,
    skip: int,
) -> None:
    config = make_config(arm, sweep_after=0)
    instance_set = await cloudvm_azure.open_instance_set(
        config, SET_ID, {}, logger, credential=credential
    )
    async with instance_set:
        hold = arm.hold(method, path, skip=skip)
        async with anyio.create_task_group() as tg:

            async def create() -> None:
                await instance_set.create(WITH_SCRATCH, IMAGE, {"k": "v"}, InitCommand(""), None)
                pytest.fail("create should have been cancelled")

            tg.start_soon(create)
            with anyio.fail_after(20):
                await hold.reached.wait()
            tg.cancel_scope.cancel()
            # A step that must finish (making the NIC, the VM's PUT) waits
            # for its answer even when cancelled: let the server give it.
            hold.release()
        arm.holds.remove(hold)
        # Let the held request finish on the server.
        await wait_until(lambda: arm.in_flight == 0)

        vm_ids = {vm["id"].lower() for vm in arm.of_type(VM)}
        for resource in arm.of_type(VM) + arm.of_type(NIC):
            assert resource["tags"][SET_ID_TAG] == SET_ID
        for nic in arm.of_type(NIC):  # none without its VM
            assert str((nic["properties"]["virtualMachine"] or {}).get("id")).lower() in vm_ids
        for disk in arm.of_type(DISK):
            tagged = (disk.get("tags") or {}).get(SET_ID_TAG) == SET_ID
            assert tagged or str(disk.get("managedBy")).lower() in vm_ids

        for instance in await instance_set.instances():
            await instance.destroy()
        await instance_set.sweep()
    assert_nothing_left(arm)


async def test_cancelled_list_leaves_the_set_usable(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    hold = arm.hold("GET", "/virtualMachines$")
    with anyio.move_on_after(20) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(iset.instances)
            await hold.reached.wait()
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    hold.release()
    arm.holds.clear()
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert [i.id for i in await iset.instances()] == [instance.id]
    await instance.destroy()
    assert_nothing_left(arm)
