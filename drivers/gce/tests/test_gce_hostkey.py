"""Host-key verification: guest attributes first, else the metadata tunnel."""

from __future__ import annotations

import asyncssh
import pytest
from gce_fake_api import FakeCompute, GCEMetadataService
from gce_helpers import IMAGE, ITYPE

import cloudvm
from cloudvm import InitCommand
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import HTTPRequest, HTTPResponse, RedirectedTarget, SSHTestServer

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


def _set_secret(fake: FakeCompute, name: str, secret: str | None) -> None:
    """Give the instance ``name`` this secret item in the fake (None: none)."""
    for (_zone, iname), raw in fake.instances.items():
        if iname == name:
            items = [i for i in raw["metadata"]["items"] if i["key"] != SECRET_TAG]
            if secret is not None:
                items.append({"key": SECRET_TAG, "value": secret})
            raw["metadata"]["items"] = items


@pytest.mark.parametrize("secret", [None, ""], ids=["missing", "empty"])
async def test_a_member_without_a_secret_is_refused_before_any_question(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute, secret: str | None
) -> None:
    # Someone tagged an instance into the set without a secret (or with an
    # empty one); its host answers an empty 200 for whatever it is asked.
    key = asyncssh.generate_private_key("ssh-ed25519")
    created = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), key)
    _set_secret(fake_gce, created.id, secret)
    (inst,) = await gce_set.instances()
    paths: list[str] = []

    def empty_answers(request: HTTPRequest) -> HTTPResponse:
        paths.append(request.path)
        return HTTPResponse(200, b"", {"metadata-flavor": "Google"})

    async with SSHTestServer(authorized_keys=[key], metadata=empty_answers) as server:
        _publish(fake_gce, inst.id, server.host_key)  # even a published key does not help
        with pytest.raises(cloudvm.HostKeyError, match="no secret"):
            await _run_true(inst, server, key)
        assert server.commands == []
    with pytest.raises(cloudvm.HostKeyError):
        await inst.verify_host_key(key, None)  # not NotImplementedError
    assert paths == []
    assert fake_gce.calls("getGuestAttributes") == []
    await inst.destroy()


class _RefusingServer(asyncssh.SSHServer):
    """A host that refuses the metadata channel with a reason of its choosing."""

    def begin_auth(self, username: str) -> bool:
        return False  # anyone may log in

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, HOSTILE)


HOSTILE = "\x1b]52;c;aGk=\x07\x9b31m no"


async def test_a_hostile_refusal_reason_reaches_the_error_only_escaped(
    gce_set: cloudvm.InstanceSet,
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _RefusingServer, "127.0.0.1", 0, server_host_keys=[host_key]
    )
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", client_keys=None
        ) as conn:
            with pytest.raises(cloudvm.HostKeyError) as info:
                await inst.verify_host_key(host_key, conn)
    finally:
        server.close()
        await server.wait_closed()
    text = str(info.value)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\\x1b" in text  # escaped, not dropped: still useful to read
    await inst.destroy()
