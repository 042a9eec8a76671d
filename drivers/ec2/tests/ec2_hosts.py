"""Hosts for moto's instances, so that the whole conformance kit (SSH steps
included) runs against the EC2 driver offline.

moto launches nothing: its instances have private addresses that lead
nowhere. :func:`hosted_driver` wraps the real ``ec2`` driver in
:class:`cloudvm.testing.HostedDriver`, which gives each instance it creates
an in-process SSH server playing its operating system. This module supplies
EC2's part (:func:`ec2_boot`): the user data as moto recorded it, run once at
"boot", and :class:`cloudvm.testing.IMDSv2Service` serving the instance's id,
its tags as moto holds them now, and its user data.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import anyio.to_thread
import asyncssh
from cloudvm_ec2 import DRIVER
from ec2_support import REGION, boto_client
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from cloudvm import Instance
from cloudvm.driverkit import RESERVED_TAG_PREFIX
from cloudvm.testing import HostBoot, HostedDriver, IMDSv2Service, SSHTestServer

__all__ = ["connect", "ec2_boot", "hosted_driver", "tags_from_moto", "user_tags_in_moto"]


@contextlib.asynccontextmanager
async def connect(
    server: SSHTestServer, key: asyncssh.SSHKey
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A plain connection to a test host, using nothing from the environment."""
    async with asyncssh.connect(
        "127.0.0.1",
        server.port,
        username="admin",
        client_keys=[key],
        known_hosts=None,
        agent_path=None,
        config=None,
    ) as conn:
        yield conn


def tags_from_moto(instance_id: str) -> Callable[[], Mapping[str, str]]:
    """The instance's tags as moto's backend (in this process) holds them at
    each call, as EC2's IMDS serves them with InstanceMetadataTags enabled."""
    return lambda: dict(ec2_backends[DEFAULT_ACCOUNT_ID][REGION].tags.get(instance_id, {}))


def user_tags_in_moto(instance_id: str) -> dict[str, str]:
    """The instance's tags in moto now, cloudvm's own ``cloudvm-*`` ones left out."""
    tags = tags_from_moto(instance_id)()
    return {k: v for k, v in tags.items() if not k.startswith(RESERVED_TAG_PREFIX)}


def ec2_boot(moto_url: str) -> Callable[[Instance], Awaitable[HostBoot]]:
    """EC2's part of a host: what moto recorded for the instance."""

    def user_data(instance_id: str) -> bytes:
        ec2 = boto_client(moto_url)
        answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(answer["UserData"]["Value"])

    async def boot(instance: Instance) -> HostBoot:
        data = await anyio.to_thread.run_sync(user_data, instance.id)
        imds = IMDSv2Service(instance.id, tags_from_moto(instance.id), user_data=data)
        return HostBoot(init_script=data, metadata=imds)

    return boot


def hosted_driver(moto_url: str) -> HostedDriver:
    """The ``ec2`` driver, with a host behind every instance it creates; use
    it with ``async with`` so that the hosts halt."""
    return HostedDriver(DRIVER, ec2_boot(moto_url))
