"""The EC2 driver against moto's EC2 server: the whole lifecycle, tags,
pagination, key pairs, and the exact RunInstances request."""

from __future__ import annotations

import base64
import logging
from typing import Any

import asyncssh
import pytest
from cloudvm_ec2 import EC2Instance, EC2InstanceSet, aws_fingerprints
from ec2_proxy import EC2FaultProxy
from ec2_support import REGION, MakeSet, World, boto_client, ec2_config, itype
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

import cloudvm
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG


def moto_instance(world: World, instance_id: str) -> dict[str, object]:
    found = world.ec2.describe_instances(InstanceIds=[instance_id])
    data: dict[str, object] = found["Reservations"][0]["Instances"][0]
    return data


def moto_tags(world: World, instance_id: str) -> dict[str, str]:
    data = moto_instance(world, instance_id)
    return {t["Key"]: t["Value"] for t in data.get("Tags", [])}  # type: ignore[attr-defined]


async def test_lifecycle_create_list_tag_destroy(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    assert await instance_set.instances() == []

    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {"role": "worker"}, cloudvm.InitCommand(""), None
    )
    assert isinstance(created, EC2Instance)
    assert created.id.startswith("i-")
    assert created.tags == {"role": "worker"}
    assert created.remote_user == "admin"
    assert created.provider_type == "m5.large"
    assert str(created) == created.id

    listed = await instance_set.instances()
    assert [i.id for i in listed] == [created.id]
    assert listed[0].tags == {"role": "worker"}
    assert listed[0].address.startswith("10.0.1.")
    assert await instance_set.instances({"role": "worker"}) != []
    assert await instance_set.instances({"role": "other"}) == []

    await listed[0].set_tags({"role": "idle", "since": "now"})
    assert listed[0].tags == {"role": "idle", "since": "now"}
    assert [i.tags for i in await instance_set.instances()] == [{"role": "idle", "since": "now"}]

    await listed[0].destroy()
    assert await instance_set.instances() == []
    assert moto_instance(world, created.id)["State"] == {"Code": 48, "Name": "terminated"}
    await listed[0].destroy()  # already gone: not an error
    assert proxy.calls("TerminateInstances")[-1].answer == "terminated-again"


async def test_instance_carries_set_id_and_secret_tags(make_set: MakeSet, world: World) -> None:
    instance_set = await make_set(set_id="set-a")
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {"a": "1"}, cloudvm.InitCommand(""), None
    )
    tags = moto_tags(world, created.id)
    assert tags[SET_ID_TAG] == "set-a"
    assert len(tags[SECRET_TAG]) >= 40
    assert set(tags) == {"a", SET_ID_TAG, SECRET_TAG}
    assert created.tags == {"a": "1"}  # the set's own tags are hidden


async def test_sets_never_see_each_others_instances(make_set: MakeSet, world: World) -> None:
    set_a = await make_set(set_id="set-a")
    set_b = await make_set(set_id="set-b")
    a = await set_a.create(
        itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    # An instance somebody else started, with no set id at all.
    world.ec2.run_instances(ImageId=world.image_id, MinCount=1, MaxCount=1)
    assert [i.id for i in await set_a.instances()] == [a.id]
    assert await set_b.instances() == []


async def test_set_tags_refuses_another_sets_instance(make_set: MakeSet, world: World) -> None:
    set_a = await make_set(set_id="set-a")
    set_b = await make_set(set_id="set-b")
    a = await set_a.create(
        itype(), cloudvm.ImageID(world.image_id), {"k": "v"}, cloudvm.InitCommand(""), None
    )
    assert isinstance(a, EC2Instance)
    foreign = EC2Instance(set_b, moto_instance(world, a.id))
    with pytest.raises(cloudvm.CloudError, match="does not carry this InstanceSet's id"):
        await foreign.set_tags({"k": "changed"})
    assert moto_tags(world, a.id)["k"] == "v"


async def test_set_tags_removes_keys_added_elsewhere(make_set: MakeSet, world: World) -> None:
    instance_set = await make_set()
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {"keep": "1"}, cloudvm.InitCommand(""), None
    )
    world.ec2.create_tags(Resources=[created.id], Tags=[{"Key": "stray", "Value": "x"}])
    await created.set_tags({"keep": "2"})
    tags = moto_tags(world, created.id)
    assert {k: v for k, v in tags.items() if not k.startswith("cloudvm-")} == {"keep": "2"}
    assert SECRET_TAG in tags and SET_ID_TAG in tags


async def test_run_instances_request_is_exact(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    boto_client(world.url, "iam").create_instance_profile(InstanceProfileName="workers")
    instance_set = await make_set(
        endpoint=proxy.url,
        iam_instance_profile="workers",
        ebs_volume_type="gp3",
        shared_tags={"owner": "ci"},
    )
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    spot = itype("c5.large", price=0.085, preemptible=True, added_scratch=(50 << 30) + 1)
    created = await instance_set.create(
        spot, cloudvm.ImageID(world.image_id), {"job": "42"}, cloudvm.InitCommand("echo hi"), key
    )

    [request] = proxy.calls("RunInstances")
    params = dict(request.params)
    token = params.pop("ClientToken")
    assert token.startswith("cloudvm-") and len(token) <= 64 and token.isascii()
    secret = moto_tags(world, created.id)[SECRET_TAG]
    key_name = proxy.calls("ImportKeyPair")[0].params["KeyName"]
    assert params == {
        "Action": "RunInstances",
        "Version": params["Version"],
        "ImageId": world.image_id,
        "InstanceType": "c5.large",
        "MinCount": "1",
        "MaxCount": "1",
        "KeyName": key_name,
        "NetworkInterface.1.DeviceIndex": "0",
        "NetworkInterface.1.AssociatePublicIpAddress": "false",
        "NetworkInterface.1.DeleteOnTermination": "true",
        "NetworkInterface.1.SecurityGroupId.1": world.security_group_id,
        "NetworkInterface.1.SubnetId": world.subnet_ids[0],
        "DisableApiTermination": "false",
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "job",
        "TagSpecification.1.Tag.1.Value": "42",
        "TagSpecification.1.Tag.2.Key": SET_ID_TAG,
        "TagSpecification.1.Tag.2.Value": "test-set",
        "TagSpecification.1.Tag.3.Key": SECRET_TAG,
        "TagSpecification.1.Tag.3.Value": secret,
        "TagSpecification.2.ResourceType": "volume",
        "TagSpecification.2.Tag.1.Key": "job",
        "TagSpecification.2.Tag.1.Value": "42",
        "TagSpecification.2.Tag.2.Key": SET_ID_TAG,
        "TagSpecification.2.Tag.2.Value": "test-set",
        "UserData": base64.b64encode(b"#!/bin/sh\necho hi\n").decode(),
        "MetadataOptions.HttpEndpoint": "enabled",
        "MetadataOptions.HttpTokens": "required",
        "MetadataOptions.InstanceMetadataTags": "enabled",
        "BlockDeviceMapping.1.DeviceName": "/dev/xvdt",
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
        "BlockDeviceMapping.1.Ebs.VolumeSize": "51",
        "BlockDeviceMapping.1.Ebs.VolumeType": "gp3",
        "InstanceMarketOptions.MarketType": "spot",
        "InstanceMarketOptions.SpotOptions.SpotInstanceType": "one-time",
        "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior": "terminate",
        "InstanceMarketOptions.SpotOptions.MaxPrice": "0.085",
        "IamInstanceProfile.Name": "workers",
    }

    # ... and what moto made of it.
    data = moto_instance(world, created.id)
    assert data["InstanceLifecycle"] == "spot"
    assert data["MetadataOptions"] == {
        "State": "applied",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 1,
        "HttpEndpoint": "enabled",
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "enabled",
    }
    assert data["KeyName"] == key_name
    assert data["IamInstanceProfile"]["Arn"].endswith(":instance-profile/workers")  # type: ignore[index]
    nics: list[dict[str, Any]] = data["NetworkInterfaces"]  # type: ignore[assignment]
    assert [n.get("Association", {}).get("PublicIp") for n in nics] == [None]
    [scratch] = [
        d
        for d in data["BlockDeviceMappings"]  # type: ignore[attr-defined]
        if d["DeviceName"] == "/dev/xvdt"
    ]
    volume = world.ec2.describe_volumes(VolumeIds=[scratch["Ebs"]["VolumeId"]])["Volumes"][0]
    assert (volume["Size"], volume["VolumeType"]) == (51, "gp3")
    assert scratch["Ebs"]["DeleteOnTermination"] is True
    user_data = world.ec2.describe_instance_attribute(InstanceId=created.id, Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]) == b"#!/bin/sh\necho hi\n"
    [pair] = world.ec2.describe_key_pairs(KeyNames=[key_name])["KeyPairs"]
    assert pair["KeyFingerprint"] == aws_fingerprints(key)[0]
    assert {t["Key"]: t["Value"] for t in pair.get("Tags", [])} == {"owner": "ci"}


async def test_user_data_secret_mode_puts_secret_in_user_data(
    make_set: MakeSet, world: World
) -> None:
    instance_set = await make_set(secret_storage="user-data")
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {"a/b": "c"}, cloudvm.InitCommand("true"), None
    )
    secret = moto_tags(world, created.id)[SECRET_TAG]
    user_data = world.ec2.describe_instance_attribute(InstanceId=created.id, Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert script == f"#!/bin/sh\n# {SECRET_TAG}: {secret}\ntrue\n"
    assert moto_instance(world, created.id)["MetadataOptions"]["InstanceMetadataTags"] == (  # type: ignore[index]
        "disabled"
    )


async def test_key_pair_is_imported_once_and_reused(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    image = cloudvm.ImageID(world.image_id)
    first = await make_set(endpoint=proxy.url)
    for _ in range(3):
        await first.create(itype(), image, {}, cloudvm.InitCommand(""), key)
    # A second set (another process, say) finds the key pair by fingerprint.
    second = await make_set(endpoint=proxy.url, set_id="other")
    await second.create(itype(), image, {}, cloudvm.InitCommand(""), key)

    assert len(proxy.calls("ImportKeyPair")) == 1
    assert len(proxy.calls("DescribeKeyPairs")) == 2  # once per set, then cached
    lookup = proxy.calls("DescribeKeyPairs")[0].params
    assert lookup["Filter.1.Name"] == "fingerprint"
    assert lookup["Filter.1.Value.1"] == aws_fingerprints(key)[0]
    assert len(world.ec2.describe_key_pairs()["KeyPairs"]) == 1


async def test_existing_key_pair_is_found_by_fingerprint(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    world.ec2.import_key_pair(
        KeyName="operators-key", PublicKeyMaterial=key.export_public_key("openssh")
    )
    instance_set = await make_set(endpoint=proxy.url)
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), key
    )
    assert proxy.calls("ImportKeyPair") == []
    assert moto_instance(world, created.id)["KeyName"] == "operators-key"


async def test_ed25519_key_is_imported_under_a_name_from_the_key(
    make_set: MakeSet, world: World
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    image = cloudvm.ImageID(world.image_id)
    first = await make_set()
    a = await first.create(itype(), image, {}, cloudvm.InitCommand(""), key)
    # moto's Ed25519 fingerprints differ from AWS's, so the second set's lookup
    # misses and its import collides with the first: it must reuse the name.
    second = await make_set(set_id="other")
    b = await second.create(itype(), image, {}, cloudvm.InitCommand(""), key)
    assert moto_instance(world, a.id)["KeyName"] == moto_instance(world, b.id)["KeyName"]


async def test_no_public_key_means_no_key_pair_calls(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    assert proxy.actions() == ["RunInstances"]
    assert "KeyName" not in moto_instance(world, created.id)


async def test_listing_filters_server_side_by_tags(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, set_id="set*?")
    await instance_set.instances({"role": "a*b"})
    [request] = proxy.calls("DescribeInstances")
    assert request.params["Filter.1.Name"] == f"tag:{SET_ID_TAG}"
    assert request.params["Filter.1.Value.1"] == "set\\*\\?"  # wildcards escaped
    assert request.params["Filter.2.Name"] == "tag:role"
    assert request.params["Filter.2.Value.1"] == "a\\*b"
    assert request.params["MaxResults"] == "1000"


async def test_listing_reads_every_page(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, page_size=5)
    image = cloudvm.ImageID(world.image_id)
    created = {
        (await instance_set.create(itype(), image, {"n": str(n)}, cloudvm.InitCommand(""), None)).id
        for n in range(12)
    }
    listed = await instance_set.instances()
    assert {i.id for i in listed} == created
    pages = proxy.calls("DescribeInstances")
    assert len(pages) == 3
    assert "NextToken" not in pages[0].params
    assert all(p.params.get("NextToken") for p in pages[1:])


async def test_shutting_down_instances_are_listed_and_terminated_ones_left_out(
    make_set: MakeSet, world: World
) -> None:
    instance_set = await make_set()
    image = cloudvm.ImageID(world.image_id)
    keep = await instance_set.create(itype(), image, {}, cloudvm.InitCommand(""), None)
    leaving = await instance_set.create(itype(), image, {}, cloudvm.InitCommand(""), None)
    gone = await instance_set.create(itype(), image, {}, cloudvm.InitCommand(""), None)
    world.ec2.terminate_instances(InstanceIds=[gone.id])
    # moto jumps straight to "terminated"; EC2 passes through "shutting-down",
    # during which the instance still exists and must be listed.
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.get_instance(leaving.id)._state.name = "shutting-down"
    listed = {i.id for i in await instance_set.instances()}
    assert listed == {keep.id, leaving.id}
    backend.get_instance(leaving.id)._state.name = "running"


async def test_public_address_mode(make_set: MakeSet, world: World) -> None:
    instance_set = await make_set(address="public")
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    [listed] = await instance_set.instances()
    data = moto_instance(world, created.id)
    assert listed.address == data.get("PublicIpAddress", "")
    assert listed.address != data["PrivateIpAddress"]


async def test_stop_closes_the_client(world: World, no_unclosed_sessions: None) -> None:
    driver = cloudvm.load_driver("ec2")
    async with await driver.instance_set(
        ec2_config(world), cloudvm.InstanceSetID("s"), {}, logging.getLogger("t")
    ) as instance_set:
        assert isinstance(instance_set, EC2InstanceSet)
        await instance_set.instances()
    with pytest.raises(RuntimeError, match="stopped"):
        await instance_set.instances()
    await instance_set.stop()  # twice is harmless
