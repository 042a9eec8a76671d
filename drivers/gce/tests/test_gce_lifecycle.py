"""Create, list, set_tags and destroy against the local Compute API."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import anyio
import asyncssh
import pytest
from cloudvm_gce import DRIVER
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE, ZONES, gce_config

import cloudvm
from cloudvm import InitCommand, InstanceSetID
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG


def _items(body: dict[str, object]) -> dict[str, str]:
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    return {i["key"]: i["value"] for i in metadata["items"]}


async def test_create_lists_and_destroys_one_instance(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {"role": "worker"}, InitCommand("echo hi"), None)
    assert inst.tags == {"role": "worker"}
    assert inst.provider_type == "n2-standard-2"
    assert inst.address.startswith("10.128.")
    assert inst.remote_user == "crunch"
    listed = await gce_set.instances({"role": "worker"})
    assert [i.id for i in listed] == [inst.id]
    assert listed[0].tags == {"role": "worker"}
    assert listed[0].address == inst.address
    await inst.destroy()
    assert await gce_set.instances() == []
    assert fake_gce.instances == {}


async def test_insert_request_carries_tags_secret_script_and_key(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {"a": "b"}, InitCommand("touch /x"), key)
    (insert,) = fake_gce.calls("insert")
    uuid.UUID(insert.query["requestId"])  # a real UUID
    body = insert.body
    items = _items(body)
    assert items[SET_ID_TAG] == "set-one"
    assert len(items[SECRET_TAG]) >= 40
    assert items["cloudvm-tags"] == '{"a":"b"}'
    assert items["startup-script"] == "#!/bin/sh\ntouch /x\n"
    assert items["enable-guest-attributes"] == "TRUE"
    pub = key.export_public_key("openssh").decode().split()
    assert items["ssh-keys"] == f"crunch:{pub[0]} {pub[1]} crunch"
    assert body["machineType"] == f"zones/{ZONES[0]}/machineTypes/n2-standard-2"
    assert body["disks"][0]["boot"] is True
    assert body["disks"][0]["initializeParams"]["sourceImage"] == IMAGE
    assert len(body["labels"]) == 2  # the set id and the one tag
    assert "scheduling" not in body
    await inst.destroy()


async def test_spot_and_added_scratch_shape_the_insert(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    itype = dataclasses.replace(ITYPE, preemptible=True, added_scratch=50 * 2**30 + 1)
    inst = await gce_set.create(itype, IMAGE, {}, InitCommand(""), None)
    body = fake_gce.calls("insert")[0].body
    assert body["scheduling"]["provisioningModel"] == "SPOT"
    assert body["scheduling"]["instanceTerminationAction"] == "DELETE"
    scratch = body["disks"][1]
    assert scratch["autoDelete"] is True
    assert scratch["initializeParams"]["diskSizeGb"] == "51"
    await inst.destroy()


async def test_local_ssd_scratch_uses_375_gib_partitions(fake_gce: FakeCompute) -> None:
    config = gce_config(fake_gce, scratch_disk="local-ssd")
    async with await DRIVER.instance_set(
        config, InstanceSetID("ssd"), {}, logging.getLogger("test")
    ) as iset:
        itype = dataclasses.replace(ITYPE, added_scratch=400 * 2**30)
        inst = await iset.create(itype, IMAGE, {}, InitCommand(""), None)
        disks = fake_gce.calls("insert")[0].body["disks"][1:]
        assert [d["type"] for d in disks] == ["SCRATCH", "SCRATCH"]
        assert disks[0]["initializeParams"]["diskType"].endswith("/diskTypes/local-ssd")
        await inst.destroy()


async def test_set_tags_replaces_user_tags_and_keeps_the_set(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {"old": "1"}, InitCommand(""), None)
    secret = fake_gce.secret_of(inst.id, SECRET_TAG)
    await inst.set_tags({"new": "2"})
    assert inst.tags == {"new": "2"}
    assert await gce_set.instances({"old": "1"}) == []
    (found,) = await gce_set.instances({"new": "2"})
    assert found.tags == {"new": "2"}
    assert fake_gce.secret_of(inst.id, SECRET_TAG) == secret
    assert fake_gce.secret_of(inst.id, SET_ID_TAG) == "set-one"
    await inst.destroy()


async def test_set_tags_rereads_after_a_stale_fingerprint(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    fake_gce.fail("setMetadata", 412, "conditionNotMet", "Metadata fingerprint stale")
    await inst.set_tags({"k": "v"})
    assert len(fake_gce.calls("setMetadata")) == 2
    assert [i.id for i in await gce_set.instances({"k": "v"})] == [inst.id]
    await inst.destroy()


async def test_listing_ignores_other_sets_instances(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    async with await DRIVER.instance_set(
        gce_config(fake_gce), InstanceSetID("set-two"), {}, logging.getLogger("test")
    ) as other:
        theirs = await other.create(ITYPE, IMAGE, {"x": "1"}, InitCommand(""), None)
        ours = await gce_set.create(ITYPE, IMAGE, {"x": "1"}, InitCommand(""), None)
        assert [i.id for i in await gce_set.instances({"x": "1"})] == [ours.id]
        assert [i.id for i in await other.instances()] == [theirs.id]
        await theirs.destroy()
        await ours.destroy()


async def test_listing_follows_every_page_in_every_zone(fake_gce: FakeCompute) -> None:
    config = gce_config(fake_gce, list_page_size=2)
    async with await DRIVER.instance_set(
        config, InstanceSetID("pages"), {}, logging.getLogger("test")
    ) as iset:
        created = [await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None) for _ in range(5)]
        listed = await iset.instances()
        assert sorted(i.id for i in listed) == sorted(i.id for i in created)
        lists = fake_gce.calls("list")
        assert {r.query["maxResults"] for r in lists} == {"2"}
        assert [r.query.get("pageToken") for r in lists if ZONES[0] in r.path] == [
            None,
            "2",
            "4",
        ]
        for inst in created:
            await inst.destroy()


async def test_listing_includes_stopping_and_stopped_instances(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    for status in ("STOPPING", "TERMINATED"):
        fake_gce.instances[(ZONES[0], inst.id)]["status"] = status
        assert [i.id for i in await gce_set.instances()] == [inst.id]
    await inst.destroy()


async def test_destroying_a_gone_instance_is_not_an_error(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    await inst.destroy()
    await inst.destroy()
    assert fake_gce.instances == {}


async def test_operations_that_take_several_polls_are_waited_for(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.op_steps = 4
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert len(fake_gce.calls("operations.get")) == 4
    assert fake_gce.instances[(ZONES[0], inst.id)]["status"] == "RUNNING"
    await inst.destroy()
    assert fake_gce.instances == {}


async def test_cancelled_create_leaves_only_tagged_instances(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.op_steps = 10**6  # the insert operation never finishes
    with anyio.move_on_after(0.5):
        await gce_set.create(ITYPE, IMAGE, {"c": "1"}, InitCommand(""), None)
        pytest.fail("create should have been cancelled")
    assert len(fake_gce.instances) == 1
    (raw,) = fake_gce.instances.values()
    items = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
    assert items[SET_ID_TAG] == "set-one"
    assert raw["labels"]
    (found,) = await gce_set.instances({"c": "1"})
    fake_gce.op_steps = 1
    await found.destroy()


async def test_a_stopped_set_refuses_calls(fake_gce: FakeCompute) -> None:
    iset = await DRIVER.instance_set(
        gce_config(fake_gce), InstanceSetID("s"), {}, logging.getLogger("test")
    )
    await iset.stop()
    await iset.stop()
    with pytest.raises(RuntimeError):
        await iset.instances()


async def test_quota_groups_follow_the_machine_family(gce_set: cloudvm.InstanceSet) -> None:
    def group(provider_type: str, preemptible: bool = False) -> str:
        itype = dataclasses.replace(ITYPE, provider_type=provider_type, preemptible=preemptible)
        return gce_set.instance_quota_group(itype)

    assert group("n2-standard-4") == "n2"
    assert group("n2d-highmem-8") == "n2d"
    assert group("e2-medium") == "e2"
    assert group("c3-standard-22") == "c3"
    assert group("a2-highgpu-1g") == "a2"
    assert group("custom-4-8192") == "n1"
    assert group("f1-micro") == "n1"
    assert group("n2-standard-4", preemptible=True) == "n2-spot"


async def test_fifty_concurrent_creates_use_at_most_one_client_set_per_concurrent_call(
    fake_gce: FakeCompute,
) -> None:
    config = gce_config(fake_gce, max_concurrent_calls=8)
    iset = await DRIVER.instance_set(config, InstanceSetID("many"), {}, logging.getLogger("t"))
    async with iset:
        created: list[cloudvm.Instance] = []

        async def create_one() -> None:
            created.append(await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(create_one)
        assert len({i.id for i in await iset.instances()}) == 50
        api = iset._api  # type: ignore[attr-defined]
        assert 1 <= api.clients_made <= 8  # as many as calls run at once
        async with anyio.create_task_group() as tg:
            for inst in created:
                tg.start_soon(inst.destroy)
    assert fake_gce.instances == {}
