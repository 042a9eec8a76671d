"""Secrets never reach a log record: the instance secret, the custom data
(the init command), the client secret and the bearer token, with every
logger at DEBUG (azure-core's HTTP logging policy, azure-identity, aiohttp,
asyncssh, httpx, ...) through a whole create, list, set_tags, verify and
destroy cycle, with a real azure-identity service-principal credential."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import asyncssh
import cloudvm_azure
import pytest
from azure.identity.aio import ClientSecretCredential
from azure_fake_arm import VM, FakeARM
from azure_imds import AzureIMDS
from azure_support import SET_ID, make_config
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

import cloudvm
from cloudvm import InitCommand
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import LogCapture, RedirectedTarget, SSHTestServer, capture_every_log

TENANT = "00000000-0000-0000-0000-00000000000b"
CLIENT_ID = "00000000-0000-0000-0000-00000000000c"
CLIENT_SECRET = "client-secret-value-9f8e7d6c5b4a"
INIT = "echo init-marker-5f1e > /tmp/x"


@pytest.fixture
def every_log() -> Iterator[LogCapture]:
    with capture_every_log() as capture:
        yield capture


async def test_no_secret_reaches_any_log_record(arm: FakeARM, every_log: LogCapture) -> None:
    arm.clients[(TENANT, CLIENT_ID)] = CLIENT_SECRET
    config = make_config(arm, tenant_id=TENANT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    key = asyncssh.generate_private_key("ssh-ed25519")
    # The credential the config names, aimed at the local token endpoint.
    credential = ClientSecretCredential(
        TENANT, CLIENT_ID, CLIENT_SECRET, authority=arm.base_url, connection_verify=False
    )
    async with credential:
        instance_set = await cloudvm_azure.open_instance_set(
            config,
            SET_ID,
            {"owner": "t"},
            logging.getLogger("cloudvm.azure.t"),
            credential=credential,
        )
        async with instance_set:
            instance = await instance_set.create(SMALL, IMAGE, {"job": "a"}, InitCommand(INIT), key)
            (listed,) = await instance_set.instances({"job": "a"})
            await listed.set_tags({"job": "b"})
            vm = arm.get(VM, instance.id)
            assert vm is not None
            imds = AzureIMDS(lambda: arm.get(VM, instance.id))
            async with SSHTestServer(authorized_keys=[key], metadata=imds) as server:
                executor = cloudvm.SSHExecutor(
                    RedirectedTarget(listed, server.address), signers=[key]
                )
                try:
                    await executor.execute("true")
                finally:
                    await executor.close()
                assert server.commands == ["true"]
            await listed.destroy()
    assert_nothing_left(arm)

    secret = vm["tags"][SECRET_TAG]
    custom_data = vm["properties"]["osProfile"]["customData"]
    (token,) = arm.tokens  # the bearer token ARM accepted
    assert base64.b64decode(custom_data).decode().endswith(f"{INIT}\n")
    names = {record.name for record in every_log.records}
    # The cycle did log, through the SDK's HTTP logging, the credential and SSH.
    assert "azure.core.pipeline.policies.http_logging_policy" in names
    assert any(name.startswith("azure.identity") for name in names)
    assert any(name.startswith("asyncssh") for name in names)
    assert any("created azure VM" in line for line in every_log.lines)
    forbidden = {
        "instance secret": secret,
        "custom data": custom_data,
        "init command": INIT,
        "client secret": CLIENT_SECRET,
        "bearer token": token,
    }
    for what, value in forbidden.items():
        leaks = [line[:300] for line in every_log.containing(value)]
        assert not leaks, f"the {what} was logged: {leaks[:3]}"
