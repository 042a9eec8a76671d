"""Hosts for a driver's instances: in-process SSH servers playing their OS.

A driver tested against a local stand-in for its cloud (moto, a fake REST
API) creates instances that lead nowhere. :class:`HostedDriver` wraps such a
driver so that every instance it creates gets an :class:`SSHTestServer` that
plays the instance's operating system, and the whole conformance kit, SSH
steps included, runs offline against the driver's own code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import asyncssh

from .._base import InstanceSetBase
from .._critical import run_critical
from .._delegating import DelegatingInstance
from .._drivers import load_driver
from .._http_server import HTTPHandler
from .._protocols import Driver, Instance, InstanceSet
from .._shell import run_script
from .._text import printable
from .._types import (
    ImageID,
    InitCommand,
    InstanceID,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from ._ssh_server import SSHTestServer

if TYPE_CHECKING:  # prometheus_client is optional
    import prometheus_client

__all__ = ["HostBoot", "HostedDriver", "HostedInstance"]

_LOG = logging.getLogger("cloudvm.testing.hosted")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostBoot:
    """What a host needs to play one instance: the cloud-specific part.

    Parameters:
        init_script: what the instance runs once at first boot, as the driver
            stored it in the cloud (EC2 user data, GCE's ``startup-script``,
            Azure's decoded ``customData``). The host runs it with
            ``/bin/sh -c`` in its work directory; empty runs nothing.
        metadata: the HTTP handler that answers 169.254.169.254:80 through
            the host's SSH connections, speaking the cloud's metadata
            protocol about this instance (None: no metadata service, so
            verification through it fails).
    """

    init_script: bytes | str = b""
    metadata: HTTPHandler | None = None


#: Called once per created instance with the driver's own instance; returns
#: what its host serves. May read the cloud's stand-in (it runs on the loop;
#: offload blocking calls).
BootCallback = Callable[[Instance], Awaitable[HostBoot]]


class HostedDriver:
    """A driver whose created instances each run on an in-process host.

    Everything is the wrapped driver's own code (``create``, listings, tags,
    ``verify_host_key``, ``destroy``) except two things: after the driver's
    ``create`` returns, a host boots (an :class:`SSHTestServer` that
    authorises ``public_key`` for the instance's ``remote_user``, serves the
    ``metadata`` handler that ``boot`` returns, and runs its ``init_script``
    once), and then every instance object the wrapper returns reports that
    host's ``address``. Destroying an instance through the wrapper also halts
    its host.

    ``create`` returns once the host is up and the init script has run, so a
    created instance is reachable at once. An instance the wrapper did not
    create (made by another driver object, or by a create that raised or was
    cancelled before its host booted) has no host: its ``address`` is ``""``.
    If ``boot`` raises, so does ``create``; the instance may exist, hostless,
    as after any failed create.

    Hosts belong to this object, not to an InstanceSet: like cloud instances,
    they outlive the set that made them, and any set made here sees them.
    :meth:`aclose` (or leaving ``async with``) halts them all. Safe to use
    concurrently from many tasks.

    Parameters:
        driver: the driver to wrap, or its registered name.
        boot: the cloud-specific part, called with the driver's instance
            after each successful create (see :class:`HostBoot`).
    """

    def __init__(self, driver: Driver | str, boot: BootCallback) -> None:
        self._driver = driver
        self._boot = boot
        self._hosts: dict[InstanceID, SSHTestServer] = {}
        self._closed = False

    def host(self, instance_id: str) -> SSHTestServer | None:
        """The running host of an instance, to look at the commands it ran or
        its work directory; None when it has none (never booted, destroyed)."""
        return self._hosts.get(InstanceID(instance_id))

    @property
    def hosts(self) -> dict[InstanceID, SSHTestServer]:
        """Every running host by instance id (a copy)."""
        return dict(self._hosts)

    async def instance_set(
        self,
        config: Mapping[str, Any] | str | bytes,
        id: InstanceSetID,
        tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> InstanceSet:
        """The wrapped driver's InstanceSet, with a host behind each instance
        it creates; the arguments go to the wrapped driver unchanged.

        Raises:
            RuntimeError: :meth:`aclose` was called.
        """
        if self._closed:
            raise RuntimeError("HostedDriver is closed and cannot make instance sets")
        driver = load_driver(self._driver) if isinstance(self._driver, str) else self._driver
        inner = await driver.instance_set(config, id, tags, logger, registry)
        return _HostedSet(inner, self)

    def _address(self, instance_id: InstanceID) -> str:
        server = self._hosts.get(instance_id)
        return server.address if server is not None and server.port else ""

    async def _start_host(self, instance: Instance, public_key: asyncssh.SSHKey | None) -> None:
        if self._closed:
            raise RuntimeError("HostedDriver is closed and cannot boot hosts")
        spec = await self._boot(instance)
        server = SSHTestServer(
            authorized_keys=[public_key] if public_key is not None else [],
            username=instance.remote_user or None,
            metadata=spec.metadata,
        )
        # Registered before it starts, so that aclose (or a destroy) halts it
        # even when this task is cancelled half-way through booting.
        old = self._hosts.pop(instance.id, None)
        self._hosts[instance.id] = server
        if old is not None:  # pragma: no cover - a driver re-used an instance id
            await self._stop_server(old)
        # Critical: once registered, the host must come up whole (a cancelled
        # create keeps it, as the cloud keeps its instance); the init script
        # below is the instance's own business and may be cancelled.
        await run_critical(server.start)
        script = spec.init_script
        text = script.decode() if isinstance(script, bytes) else script
        if text.strip():
            status, output = await run_script(text, server.workdir)
            if status != 0:
                # A real instance boots anyway; say why the marker is missing.
                _LOG.warning(
                    "the init script of %s exited %d: %s",
                    instance.id,
                    status,
                    printable(output),
                    extra={"instance_id": instance.id},
                )

    async def _halt(self, instance_id: InstanceID) -> None:
        server = self._hosts.pop(instance_id, None)
        if server is not None:
            await self._stop_server(server)

    @staticmethod
    async def _stop_server(server: SSHTestServer) -> None:
        await server.stop()  # it finishes whatever cancels us: no host outlives its entry

    async def aclose(self) -> None:
        """Halt every host; later creates raise RuntimeError. Idempotent."""
        self._closed = True
        while self._hosts:
            await self._halt(next(iter(self._hosts)))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class HostedInstance(DelegatingInstance):
    """The wrapped driver's instance, reached at its host.

    ``address`` is the host's (``""`` without one, or once destroyed);
    ``destroy`` destroys the instance and then halts its host; everything else
    is delegated unchanged to :attr:`instance`.
    """

    def __init__(self, instance: Instance, hosted: HostedDriver) -> None:
        super().__init__(instance)
        self._hosted = hosted

    @property
    def instance(self) -> Instance:
        """The wrapped driver's own instance object (the same as :attr:`wrapped`)."""
        return self._wrapped

    @property
    def address(self) -> str:
        return self._hosted._address(self._wrapped.id)

    async def destroy(self) -> None:
        await self._wrapped.destroy()
        await self._hosted._halt(self._wrapped.id)

    def __repr__(self) -> str:
        return f"<HostedInstance {self._wrapped!r} address={self.address!r}>"


class _HostedSet(InstanceSetBase):
    """The wrapped driver's set; each instance it creates boots a host."""

    def __init__(self, inner: InstanceSet, hosted: HostedDriver) -> None:
        super().__init__()
        self._inner = inner
        self._hosted = hosted

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        instance = await self._inner.create(itype, image_id, tags, init_command, public_key)
        await self._hosted._start_host(instance, public_key)
        return HostedInstance(instance, self._hosted)

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        return [HostedInstance(i, self._hosted) for i in await self._inner.instances(tags)]

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        return self._inner.instance_quota_group(itype)

    async def _stop(self) -> None:
        await self._inner.stop()
