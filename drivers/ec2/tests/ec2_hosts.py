"""Hosts for moto's instances, so that the whole conformance kit (SSH steps
included) runs against the EC2 driver offline.

moto launches nothing: its instances have private addresses that lead
nowhere. Here each instance the EC2 driver creates gets an in-process
:class:`cloudvm.testing.SSHTestServer` playing its operating system: it
authorises the key pair's public key, runs the instance's user data (as moto
recorded it) once at "boot" in its work directory, and answers the metadata
address with :class:`cloudvm.testing.IMDSv2Service` serving the instance's
id, its tags as moto holds them now, and its user data.

:func:`hosted_driver` wraps the real ``ec2`` driver: its sets and instances
are the driver's own, except that ``address`` names the instance's host and
``destroy`` also halts the host. Everything else, ``verify_host_key``
included, is the EC2 driver's code.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import asyncssh
from cloudvm_ec2 import DRIVER, EC2Instance
from ec2_support import REGION, boto_client
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

import cloudvm
from cloudvm.driverkit import InstanceSetBase
from cloudvm.testing import IMDSv2Service, SSHTestServer

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["Hosts", "hosted_driver", "tags_from_moto"]


def tags_from_moto(instance_id: str) -> Callable[[], Mapping[str, str]]:
    """The instance's tags as moto's backend (in this process) holds them at
    each call, as EC2's IMDS serves them with InstanceMetadataTags enabled."""
    return lambda: dict(ec2_backends[DEFAULT_ACCOUNT_ID][REGION].tags.get(instance_id, {}))


class Hosts:
    """The running hosts, by instance id. ``aclose`` halts them all."""

    def __init__(self, moto_url: str) -> None:
        self._moto_url = moto_url
        self._servers: dict[str, SSHTestServer] = {}

    def address(self, instance_id: str) -> str:
        server = self._servers.get(instance_id)
        return server.address if server is not None and server.port else ""

    async def boot(self, instance_id: str, public_key: asyncssh.SSHKey | None) -> None:
        user_data = await anyio.to_thread.run_sync(self._user_data, instance_id)
        server = SSHTestServer(
            authorized_keys=[public_key] if public_key else [],
            metadata=IMDSv2Service(instance_id, tags_from_moto(instance_id), user_data=user_data),
        )
        self._servers[instance_id] = server  # before start: aclose must see it
        await server.start()
        await anyio.run_process(
            ["/bin/sh", "-c", user_data.decode()], cwd=server.workdir, check=True
        )

    def _user_data(self, instance_id: str) -> bytes:
        ec2 = boto_client(self._moto_url)
        answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(answer["UserData"]["Value"])

    async def halt(self, instance_id: str) -> None:
        server = self._servers.pop(instance_id, None)
        if server is not None:
            await server.stop()

    async def aclose(self) -> None:
        for instance_id in list(self._servers):
            await self.halt(instance_id)


class HostedInstance:
    """The EC2 driver's instance, reachable at its host."""

    def __init__(self, inner: cloudvm.Instance, hosts: Hosts) -> None:
        assert isinstance(inner, EC2Instance)
        self._inner = inner
        self._hosts = hosts

    @property
    def id(self) -> cloudvm.InstanceID:
        return self._inner.id

    @property
    def provider_type(self) -> str:
        return self._inner.provider_type

    @property
    def tags(self) -> cloudvm.InstanceTags:
        return self._inner.tags

    @property
    def address(self) -> str:
        return self._hosts.address(self._inner.id)

    @property
    def remote_user(self) -> str:
        return self._inner.remote_user

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        await self._inner.verify_host_key(key, conn)

    async def set_tags(self, tags: cloudvm.InstanceTags) -> None:
        await self._inner.set_tags(tags)

    def price_history(self, itype: cloudvm.InstanceType) -> list[cloudvm.InstancePrice]:
        return self._inner.price_history(itype)

    async def destroy(self) -> None:
        await self._inner.destroy()
        await self._hosts.halt(self._inner.id)

    def __str__(self) -> str:
        return str(self._inner)


class HostedSet(InstanceSetBase):
    """The EC2 driver's set; each instance it creates boots a host."""

    def __init__(self, inner: cloudvm.InstanceSet, hosts: Hosts) -> None:
        super().__init__()
        self._inner = inner
        self._hosts = hosts

    async def create(
        self,
        itype: cloudvm.InstanceType,
        image_id: cloudvm.ImageID,
        tags: cloudvm.InstanceTags,
        init_command: cloudvm.InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> cloudvm.Instance:
        instance = await self._inner.create(itype, image_id, tags, init_command, public_key)
        await self._hosts.boot(instance.id, public_key)
        return HostedInstance(instance, self._hosts)

    async def instances(self, tags: cloudvm.InstanceTags | None = None) -> list[cloudvm.Instance]:
        return [HostedInstance(i, self._hosts) for i in await self._inner.instances(tags)]

    def instance_quota_group(self, itype: cloudvm.InstanceType) -> cloudvm.InstanceQuotaGroup:
        return self._inner.instance_quota_group(itype)

    async def _stop(self) -> None:
        await self._inner.stop()


def hosted_driver(hosts: Hosts) -> cloudvm.Driver:
    """The ``ec2`` driver, with a host behind every instance it creates."""

    async def new_set(
        config: Mapping[str, Any] | str | bytes,
        id: cloudvm.InstanceSetID,
        tags: cloudvm.SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> cloudvm.InstanceSet:
        inner = await DRIVER.instance_set(config, id, tags, logger, registry)
        return HostedSet(inner, hosts)

    return cloudvm.driver_func(new_set)
