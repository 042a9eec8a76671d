"""Host-key verification: guest attributes first, else the metadata tunnel."""

from __future__ import annotations

import asyncssh
import pytest
from gce_fake_api import FakeCompute, GCEMetadataService
from gce_helpers import IMAGE, ITYPE

import cloudvm
from cloudvm import InitCommand
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import HTTPRequest, RedirectedTarget, SSHTestServer

SECRET_PATH = f"/computeMetadata/v1/instance/attributes/{SECRET_TAG}"


def _publish(fake: FakeCompute, name: str, key: asyncssh.SSHKey) -> None:
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    fake.guest_attributes[name] = [{"namespace": "hostkeys", "key": algorithm, "value": blob}]


async def _run_true(inst: cloudvm.Instance, server: SSHTestServer, key: asyncssh.SSHKey) -> None:
    executor = cloudvm.SSHExecutor(RedirectedTarget(inst, server.address), signers=[key])
    try:
        await executor.execute("true")
    finally:
        await executor.close()


async def test_tunnel_secret_proves_the_host(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    service = GCEMetadataService(fake_gce, inst.id)
    async with SSHTestServer(authorized_keys=[key], metadata=service) as server:
        await _run_true(inst, server, key)
        assert server.commands == ["true"]
    assert service.paths == [SECRET_PATH]
    assert len(fake_gce.calls("getGuestAttributes")) == 1  # asked first, none published
    await inst.destroy()


async def test_wrong_tunnel_secret_runs_no_command(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    impostor = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    # The host answers with another instance's metadata: another secret.
    service = GCEMetadataService(fake_gce, impostor.id)
    async with SSHTestServer(authorized_keys=[key], metadata=service) as server:
        with pytest.raises(cloudvm.HostKeyError):
            await _run_true(inst, server, key)
        assert server.commands == []
    await inst.destroy()
    await impostor.destroy()


async def test_metadata_server_without_flavor_header_fails_verification(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    service = GCEMetadataService(fake_gce, inst.id)
    denied = service(HTTPRequest("GET", SECRET_PATH, "", {}, b""))
    assert denied.status == 403

    def no_flavor(request: HTTPRequest) -> cloudvm.testing.HTTPResponse:
        answer = service(request)
        return cloudvm.testing.HTTPResponse(answer.status, answer.body)  # header dropped

    async with SSHTestServer(authorized_keys=[key], metadata=no_flavor) as server:
        with pytest.raises(cloudvm.HostKeyError):
            await _run_true(inst, server, key)
        assert server.commands == []
    await inst.destroy()


async def test_published_guest_attribute_key_proves_the_host(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    service = GCEMetadataService(fake_gce, inst.id)
    async with SSHTestServer(authorized_keys=[key], metadata=service) as server:
        _publish(fake_gce, inst.id, server.host_key)
        await _run_true(inst, server, key)
        assert server.commands == ["true"]
    (call,) = fake_gce.calls("getGuestAttributes")
    assert call.query["queryPath"] == "hostkeys/"
    assert service.paths == []  # no need to ask the host anything
    await inst.destroy()


async def test_other_published_key_fails_without_running_anything(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    service = GCEMetadataService(fake_gce, inst.id)
    async with SSHTestServer(authorized_keys=[key], metadata=service) as server:
        _publish(fake_gce, inst.id, asyncssh.generate_private_key("ssh-ed25519"))
        with pytest.raises(cloudvm.HostKeyError):
            await _run_true(inst, server, key)
        assert server.commands == []
    assert service.paths == []  # the right secret cannot rescue a wrong published key
    await inst.destroy()


async def test_no_published_key_and_no_connection_is_not_implemented(
    gce_set: cloudvm.InstanceSet,
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(NotImplementedError):
        await inst.verify_host_key(host_key, None)
    await inst.destroy()
