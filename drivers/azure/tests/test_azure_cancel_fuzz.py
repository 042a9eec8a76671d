"""Cancelling create, set_tags and destroy at every suspension point, by
``Task.cancel()`` and by anyio scopes, against the local ARM API.

After each run only resources of the set exist, each fully tagged (a VM with
the caller's tags, the set id, created-at and its secret; its NIC with the
shared tags, the set id and created-at), none with a mix of old and new tags,
no NIC without its VM and no disk without its VM; nothing else: the set's
connections close and the server has nothing left to answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import cloudvm_azure
import pytest
from azure_fake_arm import DISK, NIC, VM, FakeARM
from azure_support import SET_ID, FakeCredential, make_config, wait_until
from test_azure_lifecycle import IMAGE

from cloudvm import CapacityError, InitCommand, Instance, InstanceTags, InstanceType, QuotaError
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG
from cloudvm.testing import CancelBy, cancel_at_each_suspension

WITH_SCRATCH = InstanceType("s", "Standard_D2s_v5", 2, 8 << 30, 10 << 30, 0, 10 << 30, 0.1)
SHARED = {"owner": "tests"}
OLD_TAGS = {"job": "a", "gone": "x"}
NEW_TAGS = {"job": "b", "added": "y"}
VM_OWN_TAGS = {SET_ID_TAG, cloudvm_azure.CREATED_AT_TAG, SECRET_TAG}
NIC_TAG_KEYS = {*SHARED, SET_ID_TAG, cloudvm_azure.CREATED_AT_TAG}

BY = pytest.mark.parametrize("by", [CancelBy.TASK, CancelBy.ANYIO], ids=["task", "anyio"])


class _Sets:
    """A fresh instance set per run: closing it after a run closes every
    connection, so that the server can settle before the state is checked."""

    def __init__(self, arm: FakeARM, credential: FakeCredential) -> None:
        self._arm = arm
        self._credential = credential
        self.current: cloudvm_azure.AzureInstanceSet | None = None

    async def open(self, **config: Any) -> cloudvm_azure.AzureInstanceSet:
        self.current = await cloudvm_azure.open_instance_set(
            make_config(self._arm, **config),
            SET_ID,
            SHARED,
            logging.getLogger("cloudvm.test.azure"),
            credential=self._credential,
        )
        return self.current

    async def close(self) -> None:
        if self.current is not None:
            await self.current.stop()
            self.current = None
        await self._arm.settle()


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("cloudvm-")}


def check_only_whole_instances(arm: FakeARM, *allowed_user_tags: InstanceTags) -> None:
    """Every resource is ours and whole: a fully tagged VM whose user tags are
    one of ``allowed_user_tags``, its NICs attached to it and tagged, its
    disks attached to it (tagged, or not yet tagged, as Azure makes them)."""
    vms = {vm["id"].lower(): vm for vm in arm.of_type(VM)}
    for vm in vms.values():
        tags = vm.get("tags") or {}
        assert set(tags) >= VM_OWN_TAGS, f"VM {vm['name']} lacks the set's tags: {tags}"
        assert tags[SET_ID_TAG] == SET_ID
        assert _user_tags(tags) in [dict(t) for t in allowed_user_tags], tags
    for nic in arm.of_type(NIC):
        assert set(nic.get("tags") or {}) == NIC_TAG_KEYS, nic.get("tags")
        holder = (nic["properties"].get("virtualMachine") or {}).get("id", "")
        assert holder.lower() in vms, f"NIC {nic['name']} was left without its VM"
    for disk in arm.of_type(DISK):
        assert str(disk.get("managedBy")).lower() in vms, f"disk {disk['name']} was left"
        tags = disk.get("tags")
        assert tags is None or set(tags) == NIC_TAG_KEYS, tags


def _clear(arm: FakeARM) -> None:
    arm.resources.clear()


async def _fuzz(
    by: CancelBy,
    operation: Callable[[], Awaitable[object]],
    after_each: Callable[[int, bool], Awaitable[None]],
) -> int:
    # (A step that runs to its end whatever cancellation arrives suspends
    # its caller once, so an operation made of such steps has few points.)
    cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after_each)
    assert cancelled > 0
    return cancelled


@BY
async def test_create_cancelled_anywhere_leaves_only_whole_instances(
    arm: FakeARM, credential: FakeCredential, by: CancelBy
) -> None:
    sets = _Sets(arm, credential)
    await sets.open()

    async def create() -> None:
        assert sets.current is not None
        await sets.current.create(WITH_SCRATCH, IMAGE, OLD_TAGS, InitCommand("true"), None)

    async def after_each(point: int, completed: bool) -> None:
        await sets.close()
        check_only_whole_instances(arm, OLD_TAGS)
        if completed:
            assert len(arm.of_type(VM)) == 1
            assert len(arm.of_type(NIC)) == 1
            assert all(d.get("tags") for d in arm.of_type(DISK))
        _clear(arm)
        if not completed:
            await sets.open()

    await _fuzz(by, create, after_each)


# Azure refusing the VM at once (its PUT), or failing it at the end of its
# long-running operation: the failed VM, if any, then the NIC are deleted.
FAILURES = {
    "refused": lambda arm: arm.inject(
        "PUT",
        "/virtualMachines/",
        409,
        "OperationNotAllowed",
        "Operation could not be completed as it results in exceeding approved "
        "Total Regional Cores quota.",
    ),
    "failed": lambda arm: arm.fail_operation(
        "PUT", "/virtualMachines/", "AllocationFailed", "Allocation failed."
    ),
}


@BY
@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_a_failing_create_cancelled_anywhere_still_cleans_up(
    arm: FakeARM, credential: FakeCredential, by: CancelBy, failure: str
) -> None:
    sets = _Sets(arm, credential)

    async def start() -> None:
        arm.clear_faults()
        FAILURES[failure](arm)
        await sets.open()

    async def create() -> None:
        assert sets.current is not None
        with pytest.raises((QuotaError, CapacityError)):
            await sets.current.create(WITH_SCRATCH, IMAGE, OLD_TAGS, InitCommand(""), None)

    async def after_each(point: int, completed: bool) -> None:
        await sets.close()
        # A VM whose failure was not seen yet is whole, and listed; once the
        # failure is seen, the cleanup runs to its end.
        check_only_whole_instances(arm, OLD_TAGS)
        if completed:
            assert arm.resources == {}
        _clear(arm)
        if not completed:
            await start()

    await start()
    await _fuzz(by, create, after_each)
    arm.clear_faults()


@BY
async def test_stop_cancelled_anywhere_still_ends_the_sweep_and_closes(
    arm: FakeARM, credential: FakeCredential, by: CancelBy
) -> None:
    sets = _Sets(arm, credential)

    async def start() -> None:
        instance_set = await sets.open(sweep_interval=3600)
        await wait_until(lambda: instance_set.sweeps >= 1)  # the sweep now sleeps
        await instance_set.instances()  # and a connection is open

    async def stop() -> None:
        assert sets.current is not None
        await sets.current.stop()

    async def after_each(point: int, completed: bool) -> None:
        assert sets.current is not None
        sweeper = sets.current._sweeper
        assert sweeper is None or sweeper.done()
        # Every connection of the stopped set is closed: the server settles.
        await arm.settle()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("azure-sweep")]
        if not completed:
            await start()

    await start()
    await _fuzz(by, stop, after_each)


async def _one_instance(sets: _Sets, arm: FakeARM) -> dict[str, Instance]:
    """A fresh set's view of the one VM (created with OLD_TAGS if there is
    none), in a holder that after_each refills for the next run."""
    instance_set = await sets.open()
    if not arm.of_type(VM):
        await instance_set.create(WITH_SCRATCH, IMAGE, OLD_TAGS, InitCommand(""), None)
    (instance,) = await instance_set.instances()
    return {"instance": instance}


@BY
async def test_set_tags_cancelled_anywhere_leaves_old_or_new_tags(
    arm: FakeARM, credential: FakeCredential, by: CancelBy
) -> None:
    sets = _Sets(arm, credential)
    current = await _one_instance(sets, arm)
    (vm,) = arm.of_type(VM)
    original = dict(vm["tags"])

    async def set_tags() -> None:
        await current["instance"].set_tags(NEW_TAGS)

    async def after_each(point: int, completed: bool) -> None:
        await sets.close()
        check_only_whole_instances(arm, OLD_TAGS, NEW_TAGS)
        (stored,) = arm.of_type(VM)
        # The set's own tags are never lost, whichever user tags are there.
        assert {k: v for k, v in stored["tags"].items() if k.startswith("cloudvm-")} == {
            k: v for k, v in original.items() if k.startswith("cloudvm-")
        }
        if completed:
            assert _user_tags(stored["tags"]) == NEW_TAGS
            assert current["instance"].tags == NEW_TAGS
            return
        stored["tags"] = dict(original)  # back to the old tags for the next run
        current.update(await _one_instance(sets, arm))

    await _fuzz(by, set_tags, after_each)
    _clear(arm)


@BY
async def test_destroy_cancelled_anywhere_leaves_the_whole_instance_or_nothing(
    arm: FakeARM, credential: FakeCredential, by: CancelBy
) -> None:
    sets = _Sets(arm, credential)
    current = await _one_instance(sets, arm)

    async def destroy() -> None:
        await current["instance"].destroy()

    async def after_each(point: int, completed: bool) -> None:
        await sets.close()
        check_only_whole_instances(arm, OLD_TAGS)
        if not arm.of_type(VM):
            assert arm.resources == {}
        if completed:
            assert arm.resources == {}
            return
        _clear(arm)
        current.update(await _one_instance(sets, arm))

    await _fuzz(by, destroy, after_each)
