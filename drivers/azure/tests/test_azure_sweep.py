"""The background sweep of dangling NICs and disks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import cloudvm_azure
from azure_fake_arm import DISK, NIC, FakeARM
from azure_support import GROUP, SET_ID, SUBSCRIPTION, FakeCredential, make_config, wait_until

from cloudvm.driverkit import SET_ID_TAG

CREATED = cloudvm_azure.CREATED_AT_TAG


def _old() -> str:
    """A creation time two hours ago, well past any sweep_after of these tests."""
    return (datetime.now(UTC) - timedelta(hours=2)).isoformat()


def _fresh() -> str:
    """A creation time of now. (Taken when the test runs, not when the module
    is imported: a long suite would have aged a module constant past
    sweep_after, and the sweep rightly deleted the "fresh" resource.)"""
    return datetime.now(UTC).isoformat()


VM_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
    "/providers/Microsoft.Compute/virtualMachines/x"
)


def _nic(arm: FakeARM, name: str, tags: dict[str, str], attached: bool = False) -> None:
    props: dict[str, object] = {
        "ipConfigurations": [],
        "virtualMachine": {"id": VM_ID} if attached else None,
    }
    arm.add(
        SUBSCRIPTION,
        GROUP,
        NIC,
        name,
        {"location": "westeurope", "tags": tags, "properties": props},
    )


def _disk(arm: FakeARM, name: str, tags: dict[str, str], attached: bool = False) -> None:
    body = {
        "location": "westeurope",
        "tags": tags,
        "managedBy": VM_ID if attached else None,
        "properties": {"diskState": "Attached" if attached else "Unattached"},
    }
    arm.add(SUBSCRIPTION, GROUP, DISK, name, body)


async def test_sweep_deletes_only_our_old_detached_nics_and_disks(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> None:
    ours_old = {SET_ID_TAG: SET_ID, CREATED: _old()}
    _nic(arm, "ours-old", ours_old)
    _nic(arm, "ours-fresh", {SET_ID_TAG: SET_ID, CREATED: _fresh()})
    _nic(arm, "ours-attached", ours_old, attached=True)
    _nic(arm, "foreign-old", {SET_ID_TAG: "another-set", CREATED: _old()})
    _nic(arm, "untagged-old", {CREATED: _old()})
    _disk(arm, "ours-old-disk", ours_old)
    _disk(arm, "ours-fresh-disk", {SET_ID_TAG: SET_ID, CREATED: _fresh()})
    _disk(arm, "ours-attached-disk", ours_old, attached=True)
    _disk(arm, "foreign-old-disk", {SET_ID_TAG: "another-set", CREATED: _old()})
    _disk(arm, "untagged-disk", {})
    config = make_config(arm, sweep_interval=0.02, sweep_after=600)
    instance_set = await cloudvm_azure.open_instance_set(
        config, SET_ID, {}, logger, credential=credential
    )
    async with instance_set:
        await wait_until(lambda: arm.get(NIC, "ours-old") is None)
        await wait_until(lambda: arm.get(DISK, "ours-old-disk") is None)
        passes = instance_set.sweeps
        await wait_until(lambda: instance_set.sweeps >= passes + 2)
    stopped_at = len(arm.requests)
    assert sorted(n["name"] for n in arm.of_type(NIC)) == [
        "foreign-old",
        "ours-attached",
        "ours-fresh",
        "untagged-old",
    ]
    assert sorted(d["name"] for d in arm.of_type(DISK)) == [
        "foreign-old-disk",
        "ours-attached-disk",
        "ours-fresh-disk",
        "untagged-disk",
    ]
    deleted = sorted(r.path.rsplit("/", 1)[-1] for r in arm.requests if r.method == "DELETE")
    assert deleted == ["ours-old", "ours-old-disk"]
    # stop() ended the sweep: no request after it.
    await anyio.sleep(0.1)
    assert len(arm.requests) == stopped_at
    arm.resources.clear()


async def test_sweep_survives_throttling(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> None:
    arm.inject("GET", "/networkInterfaces$", 429, None)
    _nic(arm, "ours-old", {SET_ID_TAG: SET_ID, CREATED: _old()})
    config = make_config(arm, sweep_interval=0.02, sweep_after=60)
    async with await cloudvm_azure.open_instance_set(
        config, SET_ID, {}, logger, credential=credential
    ):
        await wait_until(lambda: arm.get(NIC, "ours-old") is None)
    assert arm.of_type(NIC) == []


async def test_stop_from_another_task_ends_the_sweep(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> None:
    config = make_config(arm, sweep_interval=0.02)
    instance_set = await cloudvm_azure.open_instance_set(
        config, SET_ID, {}, logger, credential=credential
    )
    await wait_until(lambda: instance_set.sweeps >= 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(instance_set.stop)
    count = len(arm.requests)
    await anyio.sleep(0.1)
    assert len(arm.requests) == count
    assert credential.closed is False  # the caller's credential stays open
