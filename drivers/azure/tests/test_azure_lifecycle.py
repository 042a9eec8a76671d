"""Create, list, tag and destroy against the fake ARM server."""

from __future__ import annotations

import base64

import anyio
import asyncssh
import cloudvm_azure
from azure_fake_arm import DISK, NIC, VM, FakeARM
from azure_support import GROUP, SET_ID, SUBSCRIPTION, wait_until

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceType
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG

IMAGE = ImageID("Canonical:ubuntu-24_04-lts:server:latest")
SMALL = InstanceType(
    name="small",
    provider_type="Standard_D2s_v5",
    vcpus=2,
    ram=8 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.1,
)


def assert_nothing_left(arm: FakeARM) -> None:
    assert arm.of_type(VM) == []
    assert arm.of_type(NIC) == []
    assert arm.of_type(DISK) == []


async def test_create_makes_a_tagged_nic_then_a_tagged_vm(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {"job": "a"}, InitCommand("echo hi"), key)

    puts = [r for r in arm.requests if r.method == "PUT"]
    assert [p.path.split("/")[-2] for p in puts] == ["networkInterfaces", "virtualMachines"]
    nic_tags = puts[0].body["tags"]
    assert nic_tags[SET_ID_TAG] == SET_ID
    assert nic_tags["owner"] == "tests"
    vm_body = puts[1].body
    assert vm_body["tags"]["job"] == "a"
    assert vm_body["tags"][SET_ID_TAG] == SET_ID
    assert len(vm_body["tags"][SECRET_TAG]) >= 32
    props = vm_body["properties"]
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    public_keys = props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
    assert public_keys == [
        {
            "path": "/home/crunch/.ssh/authorized_keys",
            "keyData": key.export_public_key("openssh").decode().strip(),
        }
    ]
    assert base64.b64decode(props["osProfile"]["customData"]) == b"#!/bin/sh\necho hi\n"
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert "priority" not in props
    assert props["networkProfile"]["networkInterfaces"][0]["id"].endswith(
        f"/networkInterfaces/{instance.id}-nic"
    )
    assert puts[0].headers["authorization"] == "Bearer fake-arm-token"
    assert all(r.query["api-version"] for r in arm.requests)

    assert instance.tags == {"job": "a"}
    assert instance.address.startswith("10.0.")
    assert instance.remote_user == "crunch"
    assert instance.provider_type == "Standard_D2s_v5"
    # The disk Azure made for the VM is tagged afterwards.
    (disk,) = arm.of_type(DISK)
    assert disk["tags"][SET_ID_TAG] == SET_ID

    await instance.destroy()
    assert_nothing_left(arm)


async def test_instances_lists_our_vms_with_addresses_and_exact_tags(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    first = await iset.create(SMALL, IMAGE, {"job": "a"}, InitCommand(""), None)
    second = await iset.create(SMALL, IMAGE, {"job": "b"}, InitCommand(""), None)
    arm.requests.clear()

    everything = await iset.instances()
    assert {i.id for i in everything} == {first.id, second.id}
    assert {i.address for i in everything} == {first.address, second.address}
    only_b = await iset.instances({"job": "b"})
    assert [i.id for i in only_b] == [second.id]
    assert only_b[0].tags == {"job": "b"}
    # One VM listing and one batched NIC listing per call (made at the same
    # time, so in either order), no per-VM GET.
    paths = [r.path.rsplit("/", 1)[-1] for r in arm.requests]
    assert sorted(paths[:2]) == sorted(paths[2:]) == ["networkInterfaces", "virtualMachines"]

    for instance in everything:
        await instance.destroy()
    assert await iset.instances() == []
    assert_nothing_left(arm)


async def test_instances_lists_vms_and_nics_at_the_same_time(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    created = await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    arm.requests.clear()
    hold = arm.hold("GET", "/virtualMachines$")
    async with anyio.create_task_group() as tg:
        listed: list[cloudvm.Instance] = []

        async def listing() -> None:
            listed.extend(await iset.instances())

        tg.start_soon(listing)
        with anyio.fail_after(20):
            await hold.reached.wait()
        # The NIC listing is under way while the VM listing is held.
        await wait_until(lambda: bool(arm.calls("GET", "/networkInterfaces$")))
        hold.release()
    arm.holds.clear()
    assert [(i.id, i.address) for i in listed] == [(created.id, created.address)]
    await created.destroy()
    assert_nothing_left(arm)


async def test_instances_ignores_vms_of_other_sets(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.add(
        SUBSCRIPTION,
        GROUP,
        VM,
        "foreign",
        {"location": "westeurope", "tags": {SET_ID_TAG: "other"}},
    )
    assert await iset.instances() == []
    # The two listings (the NICs' is made beside the VMs', before it is
    # known whether any VM is ours), no per-VM GET.
    paths = sorted(r.path.rsplit("/", 1)[-1] for r in arm.requests)
    assert paths == ["networkInterfaces", "virtualMachines"]
    arm.resources.clear()


async def test_set_tags_replaces_user_tags_and_keeps_the_set_tags(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    instance = await iset.create(SMALL, IMAGE, {"job": "a", "old": "x"}, InitCommand(""), None)
    await instance.set_tags({"job": "b"})
    assert instance.tags == {"job": "b"}
    (listed,) = await iset.instances({"job": "b"})
    assert listed.tags == {"job": "b"}
    stored = arm.get(VM, instance.id)
    assert stored is not None
    assert stored["tags"][SET_ID_TAG] == SET_ID
    assert SECRET_TAG in stored["tags"]
    await instance.destroy()
    assert_nothing_left(arm)


async def test_destroy_deletes_the_vm_then_its_nic_then_its_disks(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    spot_with_scratch = InstanceType(
        name="spot",
        provider_type="Standard_E4as_v5",
        vcpus=4,
        ram=32 << 30,
        scratch=50 << 30,
        included_scratch=0,
        added_scratch=(50 << 30) + 1,
        price=0.05,
        preemptible=True,
    )
    instance = await iset.create(spot_with_scratch, IMAGE, {}, InitCommand(""), None)
    (vm_put,) = arm.calls("PUT", "/virtualMachines/")
    props = vm_put.body["properties"]
    assert props["priority"] == "Spot"
    assert props["evictionPolicy"] == "Delete"
    assert props["billingProfile"] == {"maxPrice": -1}
    assert props["storageProfile"]["dataDisks"][0]["diskSizeGB"] == 51
    assert len(arm.of_type(DISK)) == 2
    assert all(d["tags"][SET_ID_TAG] == SET_ID for d in arm.of_type(DISK))
    arm.requests.clear()

    await instance.destroy()
    deletes = [r.path.split("/")[-2] for r in arm.requests if r.method == "DELETE"]
    assert deletes == ["virtualMachines", "networkInterfaces", "disks", "disks"]
    assert_nothing_left(arm)
    # Destroying again is harmless.
    await instance.destroy()


async def test_instances_pages_through_next_links(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.page_size = 2
    created = [await iset.create(SMALL, IMAGE, {}, InitCommand(""), None) for _ in range(5)]
    arm.requests.clear()
    listed = await iset.instances()
    assert sorted(i.id for i in listed) == sorted(i.id for i in created)
    assert all(i.address for i in listed)
    vm_pages = arm.calls("GET", "/virtualMachines$")
    assert len(vm_pages) == 3
    assert [p.query.get("$skiptoken") for p in vm_pages] == [None, "2", "4"]
    assert len(arm.calls("GET", "/networkInterfaces$")) == 3
    for instance in created:
        await instance.destroy()
    assert_nothing_left(arm)


def test_quota_groups_follow_azure_families(iset: cloudvm_azure.AzureInstanceSet) -> None:
    def group(size: str, preemptible: bool = False) -> str:
        itype = InstanceType("t", size, 2, 1, 0, 0, 0, 0.1, preemptible=preemptible)
        return iset.instance_quota_group(itype)

    assert group("Standard_D2s_v5") == "standardDSv5Family"
    assert group("Standard_D16s_v5") == "standardDSv5Family"
    assert group("Standard_E8as_v5") == "standardEASv5Family"
    assert group("Standard_NC6") == "standardNCFamily"
    assert group("Standard_D2s_v5", preemptible=True) == "lowPriority"
    assert group("Standard_E8as_v5", preemptible=True) == "lowPriority"


async def test_the_conformance_sequence_at_api_level(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    """Arvados cloudtest's API steps: nothing of ours exists; create with
    tags; the instance is listed at once with exact tags; destroy; gone."""
    assert isinstance(iset, cloudvm.InstanceSet)
    assert await iset.instances() == []
    tags = {"cloudtest": "yes", "with space": "and = sign"}
    instance = await iset.create(SMALL, IMAGE, tags, InitCommand("true"), None)
    assert isinstance(instance, cloudvm.Instance)
    (listed,) = await iset.instances(tags)
    assert listed.id == instance.id == str(instance)
    assert listed.tags == tags
    assert listed.address == instance.address
    (price,) = listed.price_history(SMALL)
    assert price.price == SMALL.price
    assert price.start_time.tzinfo is not None
    await listed.destroy()
    assert await iset.instances() == []
    assert_nothing_left(arm)


def _power_state(arm: FakeARM, name: str, power: str) -> None:
    """Give a stored VM the instance view Azure reports for ``power``
    (``PowerState/stopped``, ``PowerState/deallocated``, ...)."""
    vm = arm.get(VM, name)
    assert vm is not None
    vm["properties"]["instanceView"] = {
        "statuses": [
            {"code": "ProvisioningState/succeeded", "level": "Info"},
            {"code": power, "level": "Info"},
        ]
    }


async def test_instances_lists_vms_being_deleted_stopped_or_deallocated(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    deleting = await iset.create(SMALL, IMAGE, {"state": "deleting"}, InitCommand(""), None)
    stopped = await iset.create(SMALL, IMAGE, {"state": "stopped"}, InitCommand(""), None)
    deallocated = await iset.create(SMALL, IMAGE, {"state": "deallocated"}, InitCommand(""), None)
    being_deleted = arm.get(VM, deleting.id)
    assert being_deleted is not None
    being_deleted["properties"]["provisioningState"] = "Deleting"
    _power_state(arm, deleting.id, "PowerState/stopping")
    _power_state(arm, stopped.id, "PowerState/stopped")
    _power_state(arm, deallocated.id, "PowerState/deallocated")

    # They all still exist (and may still cost money): every one is listed,
    # with its tags, and found by them.
    listed = {i.id: i for i in await iset.instances()}
    assert set(listed) == {deleting.id, stopped.id, deallocated.id}
    for instance in (deleting, stopped, deallocated):
        assert listed[instance.id].tags == instance.tags
        (found,) = await iset.instances(instance.tags)
        assert found.id == instance.id

    for instance in listed.values():
        await instance.destroy()
    assert await iset.instances() == []
    assert_nothing_left(arm)
