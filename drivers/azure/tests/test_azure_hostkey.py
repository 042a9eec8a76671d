"""Host-key verification through the SSH connection to Azure IMDS."""

from __future__ import annotations

import asyncssh
import cloudvm_azure
import pytest
from azure_fake_arm import VM, FakeARM
from azure_imds import AzureIMDS
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

import cloudvm
from cloudvm import HostKeyError, InitCommand, Instance
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import HTTPRequest, RedirectedTarget, SSHTestServer


async def _run_true(server: SSHTestServer, instance: Instance, key: asyncssh.SSHKey) -> None:
    executor = cloudvm.SSHExecutor(RedirectedTarget(instance, server.address), signers=[key])
    try:
        await executor.execute("true")
    finally:
        await executor.close()


async def test_the_right_secret_passes(arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    imds = AzureIMDS(lambda: arm.get(VM, instance.id))
    async with SSHTestServer(authorized_keys=[key], metadata=imds) as server:
        await _run_true(server, instance, key)
        assert server.commands == ["true"]
    (request,) = imds.requests
    assert request.path == "/metadata/instance"
    assert request.query == "api-version=2021-02-01"
    assert request.headers["metadata"] == "true"
    await instance.destroy()
    assert_nothing_left(arm)


async def test_a_listed_instance_verifies_too(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    created = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    (listed,) = await iset.instances()
    async with SSHTestServer(
        authorized_keys=[key], metadata=AzureIMDS(lambda: arm.get(VM, created.id))
    ) as server:
        await _run_true(server, listed, key)
    await created.destroy()
    assert_nothing_left(arm)


async def test_a_wrong_secret_fails_before_any_command(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)

    def impostor() -> dict[str, object] | None:
        vm = arm.get(VM, instance.id)
        assert vm is not None
        return {**vm, "tags": {**vm["tags"], SECRET_TAG: "not-the-secret"}}

    async with SSHTestServer(authorized_keys=[key], metadata=AzureIMDS(impostor)) as server:
        with pytest.raises(HostKeyError):
            await _run_true(server, instance, key)
        assert server.commands == []
    await instance.destroy()
    assert_nothing_left(arm)


async def test_a_host_without_metadata_fails_before_any_command(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    async with SSHTestServer(authorized_keys=[key], metadata=AzureIMDS(lambda: None)) as server:
        with pytest.raises(HostKeyError):
            await _run_true(server, instance, key)
        assert server.commands == []
    await instance.destroy()
    assert_nothing_left(arm)


async def test_verification_needs_a_connection(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    with pytest.raises(NotImplementedError):
        await instance.verify_host_key(asyncssh.generate_private_key("ssh-ed25519"), None)
    await instance.destroy()
    assert_nothing_left(arm)


def test_imds_refuses_requests_without_the_metadata_header() -> None:
    imds = AzureIMDS(lambda: {"name": "vm", "tags": {SECRET_TAG: "s"}})
    query = "api-version=2021-02-01"
    refused = imds(HTTPRequest("GET", "/metadata/instance", query, {}, b""))
    assert refused.status == 400
    assert b"metadata header" in refused.body
    no_version = imds(HTTPRequest("GET", "/metadata/instance", "", {"metadata": "true"}, b""))
    assert no_version.status == 400
    ok = imds(HTTPRequest("GET", "/metadata/instance", query, {"metadata": "true"}, b""))
    assert ok.status == 200
    assert b'"tagsList": [{"name": "cloudvm-secret", "value": "s"}]' in ok.body
