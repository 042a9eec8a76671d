"""Secrets never reach a log record, at DEBUG on every logger: not the
instance secret, the user data (init command), the access key pair nor the
session token, though botocore logs request parameters, signed headers and
response bodies at DEBUG."""

from __future__ import annotations

import base64

import asyncssh
import pytest
from cloudvm_ec2 import EC2Instance
from ec2_hosts import connect, tags_from_moto
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, itype

import cloudvm
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import IMDSv2Service, SSHTestServer, capture_every_log

ACCESS_KEY = "AKIACLOUDVMLOGTEST01"
SECRET_KEY = "cloudvm-log-test-secret-access-key-0001"
SESSION_TOKEN = "cloudvm-log-test-session-token-0001"
INIT = "echo INIT-SECRET-7f3a > /tmp/x"


@pytest.mark.parametrize("storage", ["tag", "user-data"])
async def test_no_secret_is_ever_logged(
    storage: str, make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with capture_every_log() as logs:
        instance_set = await make_set(
            endpoint=proxy.url,
            secret_storage=storage,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            session_token=SESSION_TOKEN,
        )
        proxy.lose_response("RunInstances")  # the repeat path logs too
        created = await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), {"k": "v"}, cloudvm.InitCommand(INIT), key
        )
        [listed] = await instance_set.instances()
        assert isinstance(listed, EC2Instance)
        attribute = world.ec2.describe_instance_attribute(
            InstanceId=created.id, Attribute="userData"
        )
        user_data = base64.b64decode(attribute["UserData"]["Value"])
        imds = IMDSv2Service(created.id, tags_from_moto(created.id), user_data=user_data)
        async with (
            SSHTestServer(authorized_keys=[key], metadata=imds) as server,
            connect(server, key) as conn,
        ):
            await listed.verify_host_key(server.host_key, conn)
        await listed.set_tags({"k": "w"})
        await listed.destroy()
        await instance_set.stop()

    secret = tags_from_moto(created.id)()[SECRET_TAG]
    assert secret
    assert INIT.encode() in user_data
    secrets = {
        "instance secret": secret,
        "init command": "INIT-SECRET-7f3a",
        "user data": attribute["UserData"]["Value"],
        "access key id": ACCESS_KEY,
        "secret access key": SECRET_KEY,
        "session token": SESSION_TOKEN,
    }
    assert len(logs.lines) > 20, "expected botocore's debug records"
    leaks = {what for what, value in secrets.items() if logs.containing(value)}
    assert not leaks
    assert secret not in repr(listed) and secret not in repr(created)
