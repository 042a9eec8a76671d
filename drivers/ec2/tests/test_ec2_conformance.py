"""The conformance kit against the EC2 driver on moto (with a host behind
each instance, see ec2_hosts.py), the same API-level steps written out in
the order of Arvados' cloudtest, cancellation, and the core's resilient
wrapper over the EC2 driver."""

from __future__ import annotations

import time

import anyio
import pytest
from cloudvm_ec2 import EC2Instance
from ec2_hosts import hosted_driver
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, ec2_config, eventually, itype

import cloudvm


async def test_conformance_kit_passes(world: World, proxy: EC2FaultProxy) -> None:
    conformance = pytest.importorskip("cloudvm.testing.conformance")
    async with hosted_driver(world.url) as driver:
        config = conformance.local_test_config(
            driver,
            cloudvm.ImageID(world.image_id),
            itype("t3.small"),
            config=ec2_config(world, proxy.url, subnet_ids=world.subnet_ids),
            poll_interval=0.1,  # moto serves from threads of this process: fewer listings
        )
        report = await conformance.run_conformance(config)
    assert report.ok, str(report)
    # It really was EC2's API underneath.
    assert {"RunInstances", "DescribeInstances", "CreateTags", "TerminateInstances"} <= set(
        proxy.actions()
    )


async def test_cloudtest_sequence(make_set: MakeSet, world: World, proxy: EC2FaultProxy) -> None:
    shared = {"cluster": "ci"}
    instance_set = await make_set(endpoint=proxy.url, set_id="cloudtest", shared_tags=shared)
    bystander = await make_set(set_id="bystander")
    foreign = await bystander.create(
        itype(), cloudvm.ImageID(world.image_id), {"who": "else"}, cloudvm.InitCommand(""), None
    )

    # 1. No instance of this set exists yet.
    assert await instance_set.instances() == []

    # 2. Create with tags; a failed create may still have created it (here the
    #    response is lost past every retry), so poll the listing for it.
    tags = {**shared, "test-tag": "42"}
    proxy.lose_response("RunInstances", times=3)
    created: cloudvm.Instance | None = None
    try:
        created = await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), tags, cloudvm.InitCommand("echo 1"), None
        )
    except cloudvm.CloudError:
        [created] = await eventually(lambda: instance_set.instances(tags))
    assert created is not None

    # 3. It is listed at once, with exactly its tags.
    [listed] = await instance_set.instances()
    assert listed.id == created.id and listed.tags == tags
    assert [i.id for i in await instance_set.instances({"test-tag": "42"})] == [created.id]

    # 4. set_tags replaces.
    await listed.set_tags({"test-tag": "43"})
    [relisted] = await instance_set.instances()
    assert relisted.tags == {"test-tag": "43"}

    # 5. Destroy, then re-list until gone.
    await relisted.destroy()

    async def gone() -> bool:
        return not await instance_set.instances()

    await eventually(gone)

    # The other set's instance was never touched.
    [still] = await bystander.instances()
    assert still.id == foreign.id and still.tags == {"who": "else"}
    touched = {r.params.get("InstanceId.1") for r in proxy.calls("TerminateInstances")}
    touched |= {r.params.get("ResourceId.1") for r in proxy.calls("CreateTags")}
    assert foreign.id not in touched


async def test_cancelled_create_leaves_a_tagged_instance(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.delay("RunInstances", 1.0)
    with anyio.move_on_after(0.3) as scope:
        await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), {"job": "7"}, cloudvm.InitCommand(""), None
        )
    assert scope.cancelled_caught
    # EC2 went on with the launch; the instance carries its tags from birth.
    found = await eventually(lambda: instance_set.instances({"job": "7"}))
    assert isinstance(found[0], EC2Instance) and found[0].tags == {"job": "7"}
    # The set is still usable.
    await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )


async def test_resilient_wrapper_holds_off_after_ec2_throttling(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    wrapped = cloudvm.resilient(await make_set(endpoint=proxy.url))
    proxy.fail("DescribeInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await wrapped.instances()
    throttled_at = time.monotonic()
    assert await wrapped.instances() == []  # waits out EC2's hold-off first
    assert time.monotonic() - throttled_at >= 0.9
    assert [r.answer for r in proxy.calls("DescribeInstances")] == [
        "error:RequestLimitExceeded",
        "moto",
    ]

    proxy.fail("RunInstances", "InstanceLimitExceeded")
    for _ in range(3):
        with pytest.raises(cloudvm.QuotaError):
            await wrapped.create(
                itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
            )
    assert len(proxy.calls("RunInstances")) == 1  # the quota is never retried
