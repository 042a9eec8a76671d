"""``verify_host_key`` end to end: an instance created through moto, an
in-process SSH server whose direct-tcpip channel to 169.254.169.254:80 speaks
IMDSv2 (token required) with the instance's tags as moto holds them, and the
SSH executor."""

from __future__ import annotations

import base64

import asyncssh
import pytest
from cloudvm_ec2 import EC2Instance
from ec2_hosts import connect, tags_from_moto
from ec2_support import MakeSet, World, itype

import cloudvm
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG, metadata_client
from cloudvm.testing import (
    HTTPRequest,
    HTTPResponse,
    IMDSv2Service,
    RedirectedTarget,
    SSHTestServer,
)


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


async def new_instance(
    instance_set: cloudvm.InstanceSet, world: World, key: asyncssh.SSHKey
) -> EC2Instance:
    created = await instance_set.create(
        itype(), cloudvm.ImageID(world.image_id), {"job": "1"}, cloudvm.InitCommand(""), key
    )
    assert isinstance(created, EC2Instance)
    return created


async def test_the_right_secret_passes_and_commands_run(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance = await new_instance(await make_set(), world, client_key)
    seen: list[HTTPRequest] = []
    imds = IMDSv2Service(instance.id, tags_from_moto(instance.id))

    def recording(request: HTTPRequest) -> HTTPResponse:
        seen.append(request)
        return imds(request)

    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=recording) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(instance, server.address), signers=[client_key]
        ) as executor,
    ):
        assert await executor.execute("echo ok") == (b"ok\n", b"")
    assert server.commands == ["echo ok"]
    # IMDSv2 exactly: a token PUT, then GETs carrying the token.
    assert (seen[0].method, seen[0].path) == ("PUT", "/latest/api/token")
    assert seen[0].headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    gets = [r for r in seen if r.method == "GET"]
    assert {r.path for r in gets} == {
        "/latest/meta-data/instance-id",
        f"/latest/meta-data/tags/instance/{SECRET_TAG}",
    }
    assert all(r.headers.get("x-aws-ec2-metadata-token") for r in gets)


async def test_a_wrong_secret_fails_and_no_command_runs(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance = await new_instance(await make_set(), world, client_key)
    real = tags_from_moto(instance.id)
    imds = IMDSv2Service(instance.id, lambda: {**real(), SECRET_TAG: "not-the-secret"})
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(instance, server.address), signers=[client_key]
        ) as executor,
    ):
        with pytest.raises(cloudvm.HostKeyError):
            await executor.execute("echo ok")
    assert server.commands == []


async def test_another_instance_fails(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance_set = await make_set()
    ours = await new_instance(instance_set, world, client_key)
    other = await new_instance(instance_set, world, client_key)
    # The server is `other`, answering truthfully about itself.
    imds = IMDSv2Service(other.id, tags_from_moto(other.id))
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(ours, server.address), signers=[client_key]
        ) as executor,
    ):
        with pytest.raises(cloudvm.HostKeyError, match="another instance"):
            await executor.execute("echo ok")
    assert server.commands == []


async def test_metadata_without_the_tag_fails(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    # An instance launched without InstanceMetadataTags: IMDS has no tags.
    instance = await new_instance(await make_set(), world, client_key)
    imds = IMDSv2Service(instance.id, dict)
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        connect(server, client_key) as conn,
    ):
        with pytest.raises(cloudvm.HostKeyError, match="cannot read the metadata service"):
            await instance.verify_host_key(server.host_key, conn)


async def test_user_data_secret_mode(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance = await new_instance(await make_set(secret_storage="user-data"), world, client_key)
    attribute = world.ec2.describe_instance_attribute(InstanceId=instance.id, Attribute="userData")
    user_data = base64.b64decode(attribute["UserData"]["Value"])
    # Tags are not in IMDS in this mode; the user data is.
    imds = IMDSv2Service(instance.id, dict, user_data=user_data)
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(instance, server.address), signers=[client_key]
        ) as executor,
    ):
        assert await executor.execute("echo ok") == (b"ok\n", b"")

    forged = IMDSv2Service(instance.id, dict, user_data=b"#!/bin/sh\n# cloudvm-secret: x\n")
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=forged) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(instance, server.address), signers=[client_key]
        ) as executor,
    ):
        with pytest.raises(cloudvm.HostKeyError):
            await executor.execute("echo ok")
    assert server.commands == []


async def test_the_metadata_service_refuses_missing_or_wrong_tokens(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance = await new_instance(await make_set(), world, client_key)
    imds = IMDSv2Service(instance.id, tags_from_moto(instance.id))
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        connect(server, client_key) as conn,
        metadata_client(conn) as client,
    ):
        path = f"/latest/meta-data/tags/instance/{SECRET_TAG}"
        assert (await client.get(path)).status_code == 401
        wrong = {"X-aws-ec2-metadata-token": "forged"}
        assert (await client.get(path, headers=wrong)).status_code == 401
        token = await client.put(
            "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        answer = await client.get(path, headers={"X-aws-ec2-metadata-token": token.text})
        assert answer.status_code == 200
        assert answer.text == tags_from_moto(instance.id)()[SECRET_TAG]


async def test_without_a_connection_verification_is_not_implemented(
    make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance = await new_instance(await make_set(), world, client_key)
    with pytest.raises(NotImplementedError):
        await instance.verify_host_key(client_key, None)


def tag_into_the_set(world: World, secret: str | None) -> str:
    """An instance someone else launched and tagged with the set's id: with
    no secret tag, or with the given one."""
    tags = [{"Key": SET_ID_TAG, "Value": "test-set"}]
    if secret is not None:
        tags.append({"Key": SECRET_TAG, "Value": secret})
    answer = world.ec2.run_instances(
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SubnetId=world.subnet_ids[0],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    instance_id: str = answer["Instances"][0]["InstanceId"]
    return instance_id


@pytest.mark.parametrize("secret", [None, ""])
async def test_an_instance_without_a_secret_is_never_trusted(
    secret: str | None, make_set: MakeSet, world: World, client_key: asyncssh.SSHKey
) -> None:
    instance_id = tag_into_the_set(world, secret)
    [listed] = await (await make_set()).instances()
    assert listed.id == instance_id
    # The host answers truthfully for that instance, empty secret included.
    imds = IMDSv2Service(instance_id, tags_from_moto(instance_id))
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        connect(server, client_key) as conn,
    ):
        with pytest.raises(cloudvm.HostKeyError, match="no secret"):
            await listed.verify_host_key(server.host_key, conn)
    # Trust on first use would trust a NotImplementedError; it must not here.
    async with (
        SSHTestServer(authorized_keys=[client_key], metadata=imds) as server,
        cloudvm.SSHExecutor(
            RedirectedTarget(listed, server.address), signers=[client_key], trust_on_first_use=True
        ) as executor,
    ):
        with pytest.raises(cloudvm.HostKeyError):
            await executor.execute("echo ok")
    assert server.commands == []
