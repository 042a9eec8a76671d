"""Fixtures for HostedDriver's tests: the fake driver (with its own SSH
servers, whose metadata handlers the hosts reuse) wrapped with hosts."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator

import pytest

import cloudvm
from cloudvm import Instance
from cloudvm.testing import (
    FakeCloud,
    HostBoot,
    HostedDriver,
    HTTPHandler,
    HTTPRequest,
    HTTPResponse,
)

LOG = logging.getLogger("tests.hosted")
SET_ID = cloudvm.InstanceSetID("hosted-set")
IMAGE = cloudvm.ImageID("ami-hosted")
SMALL = cloudvm.InstanceType(
    name="small", provider_type="t3.small", vcpus=2, ram=2**31,
    scratch=0, included_scratch=0, added_scratch=0, price=0.02,
)  # fmt: skip


async def ask(handler: HTTPHandler, request: HTTPRequest) -> HTTPResponse:
    """One request straight to an HTTP handler, sync or async."""
    answer = handler(request)
    return await answer if inspect.isawaitable(answer) else answer


async def user_data(imds: HTTPHandler) -> bytes:
    """The user data an IMDSv2 handler serves (empty when it has none)."""
    ttl = {"x-aws-ec2-metadata-token-ttl-seconds": "60"}
    token = await ask(imds, HTTPRequest("PUT", "/latest/api/token", "", ttl, b""))
    header = {"x-aws-ec2-metadata-token": token.body.decode()}
    answer = await ask(imds, HTTPRequest("GET", "/latest/user-data", "", header, b""))
    return answer.body if answer.status == 200 else b""


async def fake_boot(cloud: FakeCloud, instance: Instance) -> HostBoot:
    """The fake cloud's part: its instance's metadata service (the fake's own
    IMDSv2 handler, which knows the secret) and the init command it stored."""
    own = cloud.ssh_server(instance.id)
    assert own is not None and own.metadata is not None
    return HostBoot(init_script=await user_data(own.metadata), metadata=own.metadata)


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud({"ssh": True, "rate_limits": None, "remote_user": "worker"}) as fake:
        yield fake


@pytest.fixture
async def hosted(cloud: FakeCloud) -> AsyncIterator[HostedDriver]:
    async def boot(instance: Instance) -> HostBoot:
        return await fake_boot(cloud, instance)

    async with HostedDriver(cloud.driver, boot) as driver:
        yield driver


@pytest.fixture
async def hosted_set(hosted: HostedDriver) -> AsyncIterator[cloudvm.InstanceSet]:
    instance_set = await hosted.instance_set({}, SET_ID, {}, LOG)
    yield instance_set
    await instance_set.stop()
