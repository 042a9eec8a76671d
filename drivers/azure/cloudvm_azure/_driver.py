"""The Azure InstanceSet and Instance, on azure-mgmt-compute/network aio."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import anyio
import asyncssh
import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.network.aio import NetworkManagementClient

from cloudvm import (
    CloudError,
    HostKeyError,
    ImageID,
    InitCommand,
    Instance,
    InstanceID,
    InstancePrice,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
    driver_func,
)
from cloudvm.driverkit import (
    RESERVED_TAG_PREFIX,
    SECRET_TAG,
    SET_ID_TAG,
    CallMetrics,
    InstanceSetBase,
    check_secret,
    metadata_client,
    new_secret,
    parse_config,
    printable,
    run_critical,
    validate_init_command,
    validate_tags,
)

from ._config import AzureConfig
from ._errors import Backoff, map_error

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["CREATED_AT_TAG", "DRIVER", "AzureInstance", "AzureInstanceSet", "open_instance_set"]

#: The tag carrying the UTC creation time (ISO 8601) on every resource a set creates.
CREATED_AT_TAG = "cloudvm-created-at"
IMDS_API_VERSION = "2021-02-01"
IMDS_TIMEOUT = 30.0  # seconds for the whole metadata exchange
CLEANUP_TIMEOUT = 300.0  # seconds a failed create may spend deleting what it made
CRITICAL_TIMEOUT = 300.0  # seconds a step of create that must finish may take
_SWEEP_ERROR_DELAY = 5.0  # seconds before the next sweep after a failed one
#: Azure's limit of tags on one resource.
MAX_TAGS = 50
#: Characters Azure refuses in tag names.
FORBIDDEN_TAG_NAME_CHARS = frozenset("<>%&\\?/")
_OWN_TAGS = (SET_ID_TAG, CREATED_AT_TAG)  # on every resource the set makes
_OWN_VM_TAGS = (*_OWN_TAGS, SECRET_TAG)
# Standard_E8as_v5 -> ("E", "as", "_v5")
_SIZE = re.compile(r"^(?:Standard|Basic)_([A-Za-z]+)\d+(?:-\d+)?([a-z]*)(?:_([A-Za-z0-9]+))*$")


def _plain(value: Any) -> dict[str, Any]:
    """A wire-format dict from an SDK model (they are MutableMappings)."""
    if hasattr(value, "as_dict"):
        return cast(dict[str, Any], value.as_dict())
    return dict(value)


def _get(data: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _image_reference(image_id: str) -> dict[str, str]:
    """ARM's imageReference for a managed image or gallery version id, a
    shared or community gallery id, or ``publisher:offer:sku:version``."""
    lowered = image_id.lower()
    if lowered.startswith("/subscriptions/"):
        return {"id": image_id}
    if lowered.startswith("/sharedgalleries/"):
        return {"sharedGalleryImageId": image_id}
    if lowered.startswith("/communitygalleries/"):
        return {"communityGalleryImageId": image_id}
    parts = image_id.split(":")
    if len(parts) == 4 and all(parts):
        return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))
    raise ValueError(
        "image_id must be a resource id (/subscriptions/...), a gallery id "
        "(/SharedGalleries/... or /CommunityGalleries/...) or publisher:offer:sku:version"
    )


def _azure_tags(tags: object, *, room: int, field: str = "tags") -> InstanceTags:
    """``validate_tags``, then what Azure itself refuses, before any call:
    tag names holding any of ``< > % & \\ ? /``, and more tags than fit on
    a resource beside the set's own (``room``). ValueError naming the key."""
    checked = validate_tags(tags, field=field)
    for key in checked:
        bad = sorted(FORBIDDEN_TAG_NAME_CHARS.intersection(key))
        if bad:
            raise ValueError(
                f"{field}: key {key[:40]!r} holds {' '.join(bad)}, which Azure "
                "refuses in tag names (< > % & \\ ? /)"
            )
    if len(checked) > room:
        raise ValueError(
            f"{field}: {len(checked)} tags, but Azure allows {MAX_TAGS} on a resource "
            f"and the set's own take {MAX_TAGS - room}: at most {room}"
        )
    return checked


def _user_tags(tags: Mapping[str, str] | None) -> InstanceTags:
    return {k: v for k, v in (tags or {}).items() if not k.startswith(RESERVED_TAG_PREFIX)}


def _slug(text: str, size: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:size].strip("-") or "set"


def _created_at(tags: Mapping[str, str] | None, fallback: Any) -> datetime | None:
    for text in ((tags or {}).get(CREATED_AT_TAG), fallback):
        if isinstance(text, str):
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


class AzureInstance:
    """One Azure VM as of the listing or create that produced it."""

    def __init__(
        self, instance_set: AzureInstanceSet, vm: dict[str, Any], address: str, remote_user: str
    ) -> None:
        self._set = instance_set
        self._vm = vm
        self._all_tags: dict[str, str] = dict(vm.get("tags") or {})
        self._address = address
        self._remote_user = remote_user

    @property
    def id(self) -> InstanceID:
        """The VM's name, unique in its resource group."""
        return InstanceID(str(self._vm["name"]))

    @property
    def provider_type(self) -> str:
        """The VM size, such as ``Standard_D2s_v5``."""
        return str(_get(self._vm, "properties", "hardwareProfile", "vmSize") or "")

    @property
    def tags(self) -> InstanceTags:
        """A copy of the caller's tags (the driver's ``cloudvm-`` tags are hidden)."""
        return _user_tags(self._all_tags)

    @property
    def address(self) -> str:
        """The primary NIC's private IP address; "" while Azure has not assigned one."""
        return self._address

    @property
    def remote_user(self) -> str:
        """The config's ``admin_username`` (Azure does not allow root logins)."""
        return self._remote_user

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the VM's tags with ``tags``, keeping the set's own tags
        (set id, secret, created-at). ValueError for bad tags before any call."""
        checked = _azure_tags(tags, room=MAX_TAGS - len(_OWN_VM_TAGS))
        kept = {k: v for k, v in self._all_tags.items() if k.startswith(RESERVED_TAG_PREFIX)}
        new = {**checked, **kept}
        await self._set._set_tags(self.id, new)
        self._all_tags = new

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """One price, ``itype.price`` (the caller's, which includes any added
        scratch), since the VM was created; empty when the creation time is
        unknown. The driver does not read Azure's price sheets."""
        created = _created_at(self._all_tags, _get(self._vm, "properties", "timeCreated"))
        return [] if created is None else [InstancePrice(created, itype.price)]

    async def destroy(self) -> None:
        """Delete the VM, then its NIC and disks. A VM already gone is no error."""
        await self._set._destroy(self._vm)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove the host through Azure IMDS: through ``conn`` ask
        169.254.169.254 (``Metadata: true``) for the instance's metadata and
        compare the ``cloudvm-secret`` entry of its ``compute.tagsList`` with
        the secret create stored, in constant time. The host is not proven
        yet: the exchange has one deadline (IMDS_TIMEOUT seconds, opening
        the channel included), the answer is bounded and never decompressed
        (:func:`cloudvm.driverkit.metadata_client`), and text the host chose
        reaches errors only escaped (:func:`cloudvm.driverkit.printable`).

        Returns None when the secrets match. Raises HostKeyError when the VM
        carries no secret, or the host's answer is missing, late, malformed
        or holds another secret; NotImplementedError when ``conn`` is None.
        """
        if conn is None:
            raise NotImplementedError("azure verifies host keys only through a live connection")
        expected = self._all_tags.get(SECRET_TAG)
        if not expected:
            raise HostKeyError(f"{self}: the VM carries no {SECRET_TAG} tag to check against")
        deadline = IMDS_TIMEOUT
        try:
            # The client's deadline bounds its requests, answers read to their
            # end; the scope also bounds opening and closing it: one deadline.
            with anyio.fail_after(deadline):
                async with metadata_client(conn, timeout=deadline) as client:
                    response = await client.get(
                        "/metadata/instance",
                        params={"api-version": IMDS_API_VERSION},
                        headers={"Metadata": "true"},
                    )
        except (TimeoutError, httpx.TimeoutException):
            raise HostKeyError(f"{self}: Azure IMDS did not answer within {deadline:g} s") from None
        except (httpx.HTTPError, OSError, asyncssh.Error) as exc:
            # The reason may be text the unproven host chose: escape it.
            reason = printable(str(exc), limit=120)
            raise HostKeyError(
                f"{self}: cannot read Azure IMDS ({type(exc).__name__}: {reason})"
            ) from None
        if response.status_code != 200:
            raise HostKeyError(f"{self}: Azure IMDS answered HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise HostKeyError(f"{self}: the answer of Azure IMDS is not JSON") from None
        check_secret(_presented_secret(document, self), expected)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AzureInstance {self.id} address={self._address!r} tags={self.tags!r}>"


def _presented_secret(document: object, who: object) -> str:
    """The ``cloudvm-secret`` value of an IMDS instance document's
    ``compute.tagsList``; HostKeyError when there is none."""
    tags_list = _get(document, "compute", "tagsList") if isinstance(document, Mapping) else None
    presented = None
    if isinstance(tags_list, list):
        for item in tags_list:
            if isinstance(item, Mapping) and item.get("name") == SECRET_TAG:
                presented = item.get("value")
    if not isinstance(presented, str):
        raise HostKeyError(f"{who}: the host's metadata carries no instance secret")
    return presented


class AzureInstanceSet(InstanceSetBase):
    """The Azure InstanceSet; see the ``azure`` driver and README.

    It owns one background task, the sweep of dangling NICs and disks, which
    :meth:`stop` cancels and awaits.
    """

    def __init__(
        self,
        config: AzureConfig,
        set_id: InstanceSetID,
        shared_tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        metrics: CallMetrics,
        credential: AsyncTokenCredential,
        *,
        owns_credential: bool,
    ) -> None:
        super().__init__()
        self._config = config
        self._id = set_id
        self._shared_tags = dict(shared_tags)
        self._logger = logger
        self._metrics = metrics
        self._credential = credential
        self._owns_credential = owns_credential
        self._backoff = Backoff()
        self._group = config.resource_group
        options: dict[str, Any] = {
            "base_url": config.base_url,
            "credential_scopes": [f"{config.base_url}/.default"],
            # azure-core would retry 429 ten times; throttling must surface.
            "retry_total": 0,
            # Never log bodies: they carry the custom data and the instance
            # secret (the HTTP logging policy logs headers, the token redacted).
            "logging_enable": False,
            "polling_interval": config.lro_polling_interval,
            "connection_verify": config.connection_verify,
            "connection_timeout": config.request_timeout,
            "read_timeout": config.request_timeout,
        }
        if config.plain_http:
            # Allowed by the config (a loopback address, or insecure transport
            # asked for); azure-core would refuse the bearer token otherwise.
            options["per_call_policies"] = [_PlainHttpAllowed()]
        self._compute = ComputeManagementClient(credential, config.subscription_id, **options)
        self._network = NetworkManagementClient(credential, config.subscription_id, **options)
        network_group = config.network_resource_group or config.resource_group
        self._subnet_id = (
            f"/subscriptions/{config.subscription_id}/resourceGroups/{network_group}"
            f"/providers/Microsoft.Network/virtualNetworks/{config.network}/subnets/{config.subnet}"
        )
        self._sweeper: asyncio.Task[None] | None = None
        #: Completed sweep passes (for tests and metrics).
        self.sweeps = 0

    def _start(self) -> None:
        if self._config.sweep_interval is not None:
            # Owned, not fire-and-forget: stop() cancels and awaits it. A task
            # rather than a task group held open, so that stop() may run in
            # another task than the one that made the set.
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(self._config.sweep_interval), name=f"azure-sweep-{self._id}"
            )

    # -- calling Azure ------------------------------------------------------

    @contextlib.contextmanager
    def _calling(self, kind: str, what: str) -> Iterator[None]:
        """Map azure-core's errors for the calls in the block."""
        try:
            yield
        except HttpResponseError as exc:
            raise map_error(exc, kind=kind, backoff=self._backoff, what=what) from exc
        except AzureError as exc:
            raise CloudError(f"{what}: {type(exc).__name__}: {exc.message}") from exc
        self._backoff.reset(kind)

    async def _pages(self, pager: Any) -> AsyncIterator[dict[str, Any]]:
        async for item in pager:
            yield _plain(item)

    async def _list_vms(self) -> list[dict[str, Any]]:
        with self._calling("list", "listing virtual machines"):
            return [
                vm async for vm in self._pages(self._compute.virtual_machines.list(self._group))
            ]

    async def _list_nics(self) -> list[dict[str, Any]]:
        with self._calling("list", "listing network interfaces"):
            pager = self._network.network_interfaces.list(self._group)
            return [nic async for nic in self._pages(pager)]

    async def _list_disks(self) -> list[dict[str, Any]]:
        with self._calling("list", "listing disks"):
            pager = self._compute.disks.list_by_resource_group(self._group)
            return [disk async for disk in self._pages(pager)]

    # -- create -------------------------------------------------------------

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Create a NIC, then a VM using it, both tagged at creation with the
        set id and created-at (the VM also with ``tags`` and the instance
        secret, the NIC with the shared tags). ``init_command`` is the VM's
        custom data; password logins are off and ``public_key`` (a throwaway
        key when None) is the admin user's authorized key; preemptible types
        are spot VMs (eviction Delete, max price -1); ``added_scratch`` is a
        data disk. If the VM fails, its NIC (and a failed VM) are deleted at
        once. A cancelled create leaves only tagged resources, which the
        sweep or a later ``destroy`` removes.

        ValueError/TypeError for bad input before any call; RateLimitError,
        QuotaError, CapacityError or CloudError as Azure answers.
        """
        self._check_open()
        if not isinstance(itype, InstanceType):
            raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
        if not isinstance(image_id, str):
            raise TypeError(f"image_id must be a string, not {type(image_id).__name__}")
        image = _image_reference(image_id)
        checked_tags = _azure_tags(tags, room=MAX_TAGS - len(_OWN_VM_TAGS))
        checked_init = validate_init_command(init_command)
        if public_key is not None and not isinstance(public_key, asyncssh.SSHKey):
            raise TypeError(
                f"public_key must be an asyncssh.SSHKey or None, not {type(public_key).__name__}"
            )
        key = public_key or asyncssh.generate_private_key("ssh-ed25519")
        key_data = key.export_public_key("openssh").decode().strip()
        config = self._config
        vm_name = f"{config.name_prefix}-{_slug(self._id, 24)}-{secrets.token_hex(6)}"
        nic_name = f"{vm_name}-nic"
        created = datetime.now(UTC).isoformat()
        ours = {SET_ID_TAG: self._id, CREATED_AT_TAG: created}
        nic_body = {
            "location": config.location,
            "tags": {**self._shared_tags, **ours},
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "primary",
                        "properties": {
                            "subnet": {"id": self._subnet_id},
                            "privateIPAllocationMethod": "Dynamic",
                            "primary": True,
                        },
                    }
                ]
            },
        }
        # Each step that makes something runs to its end whatever cancellation
        # arrives (run_critical), so that what it made is known: a cancelled
        # NIC creation deletes the NIC again; a VM PUT either made a VM that
        # holds the NIC, or was refused and the NIC is deleted. Only waiting
        # for the VM's provisioning may be cut short: the VM is tagged, and
        # listed, from its PUT on.
        with self._metrics.observe("create_nic"):
            nic = await run_critical(
                lambda: self._create_nic(nic_name, nic_body),
                rollback=lambda _: self._cleanup_failed(None, nic_name, "a cancelled create"),
            )
        vm_body = self._vm_body(vm_name, nic, itype, image, checked_tags, checked_init, key_data)
        vm_body["tags"] = {**checked_tags, **ours, SECRET_TAG: new_secret()}
        with self._metrics.observe("create"):
            poller = await run_critical(lambda: self._put_vm(vm_name, vm_body, nic_name))
            try:
                with self._calling("create", "creating a VM"):
                    vm = _plain(await poller.result())
            except CloudError as exc:
                cause = exc.__cause__
                # A status of the operation that says Failed arrives in a 2xx
                # poll answer; a throttled or broken poll leaves the VM's fate
                # unknown, and the VM to a later listing.
                if isinstance(cause, HttpResponseError) and (cause.status_code or 0) < 300:
                    await run_critical(
                        lambda: self._cleanup_failed(vm_name, nic_name, "a failed create")
                    )
                else:
                    self._logger.warning(
                        "VM %s was accepted but its creation could not be followed; "
                        "a later listing shows it if it exists",
                        vm_name,
                        extra={"instance_id": vm_name, "instance_set_id": self._id},
                    )
                raise
        await self._tag_disks(vm)
        self._logger.info(
            "created azure VM %s",
            vm_name,
            extra={"instance_id": vm_name, "instance_set_id": self._id},
        )
        return AzureInstance(self, vm, _nic_address(nic), config.admin_username)

    def _vm_body(
        self,
        vm_name: str,
        nic: dict[str, Any],
        itype: InstanceType,
        image: dict[str, str],
        tags: InstanceTags,
        init_command: str,
        key_data: str,
    ) -> dict[str, Any]:
        config = self._config
        managed: dict[str, Any] = {}
        if config.storage_account_type:
            managed["storageAccountType"] = config.storage_account_type
        os_profile: dict[str, Any] = {
            "computerName": vm_name,
            "adminUsername": config.admin_username,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [
                        {
                            "path": f"/home/{config.admin_username}/.ssh/authorized_keys",
                            "keyData": key_data,
                        }
                    ]
                },
            },
        }
        if init_command:
            script = (
                init_command if init_command.startswith("#!") else f"#!/bin/sh\n{init_command}\n"
            )
            os_profile["customData"] = base64.b64encode(script.encode()).decode()
        storage: dict[str, Any] = {
            "imageReference": image,
            "osDisk": {
                "name": f"{vm_name}-os",
                "createOption": "FromImage",
                "deleteOption": "Delete",
                "managedDisk": dict(managed),
            },
        }
        if itype.added_scratch > 0:
            gib = -(-itype.added_scratch // (1 << 30))  # ceil
            storage["dataDisks"] = [
                {
                    "lun": 0,
                    "name": f"{vm_name}-scratch",
                    "createOption": "Empty",
                    "diskSizeGB": gib,
                    "deleteOption": "Delete",
                    "managedDisk": dict(managed),
                }
            ]
        properties: dict[str, Any] = {
            "hardwareProfile": {"vmSize": itype.provider_type},
            "storageProfile": storage,
            "osProfile": os_profile,
            "networkProfile": {
                "networkInterfaces": [
                    {"id": nic["id"], "properties": {"primary": True, "deleteOption": "Delete"}}
                ]
            },
        }
        if itype.preemptible:
            properties["priority"] = "Spot"
            properties["evictionPolicy"] = "Delete"
            properties["billingProfile"] = {"maxPrice": -1}
        return {"location": config.location, "properties": properties}

    async def _create_nic(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the NIC and wait until it exists (a critical section: at
        most CRITICAL_TIMEOUT seconds)."""
        with self._calling("create", "creating a NIC"), _bounded("creating a NIC"):
            poller = await self._network.network_interfaces.begin_create_or_update(
                self._group, name, cast(Any, body)
            )
            return _plain(await poller.result())

    async def _put_vm(self, vm_name: str, body: dict[str, Any], nic_name: str) -> Any:
        """Ask Azure for the VM (a critical section): returns the poller of
        its creation. When Azure refuses, or the answer is lost, deletes the
        NIC at once (NICs count against quota; one a VM took is kept by it),
        then raises the mapped error."""
        try:
            with self._calling("create", "creating a VM"), _bounded("creating a VM"):
                return await self._compute.virtual_machines.begin_create_or_update(
                    self._group, vm_name, cast(Any, body)
                )
        except CloudError:
            await self._cleanup_failed(None, nic_name, "a failed create")
            raise

    async def _cleanup_failed(self, vm_name: str | None, nic_name: str, why: str) -> None:
        """Delete what a failed or cancelled create made: the VM when Azure
        accepted it (a failed operation leaves it in state Failed, holding
        the NIC), then the NIC, at once, since NICs count against quota.
        Never raises a CloudError (logs it: the sweep retries the NIC); takes
        at most CLEANUP_TIMEOUT seconds."""
        extra = {"instance_id": vm_name or nic_name, "instance_set_id": self._id}
        try:
            with anyio.fail_after(CLEANUP_TIMEOUT):
                if vm_name is not None:
                    with self._calling("destroy", "deleting a failed VM"):
                        poller = await self._compute.virtual_machines.begin_delete(
                            self._group, vm_name
                        )
                        await poller.result()
                with self._calling("destroy", "deleting the NIC of a VM not made"):
                    nic_poller = await self._network.network_interfaces.begin_delete(
                        self._group, nic_name
                    )
                    await nic_poller.result()
        except CloudError as exc:
            if exc.code == "NicInUse":
                # The VM whose answer was lost exists and holds the NIC: both
                # are tagged, and listed.
                self._logger.info("NIC %s is in use by its VM; kept", nic_name, extra=extra)
                return
            self._logger.warning(
                "could not clean up after %s of %s (the sweep will retry): %s",
                why,
                vm_name or nic_name,
                exc,
                extra=extra,
            )
        except TimeoutError:
            self._logger.warning(
                "could not clean up after %s of %s within %s s (the sweep will retry)",
                why,
                vm_name or nic_name,
                CLEANUP_TIMEOUT,
                extra=extra,
            )

    async def _tag_disks(self, vm: dict[str, Any]) -> None:
        """Tag the disks Azure made for the VM (it does not copy the VM's tags
        to them), so that a disk left behind is known to be ours."""
        tags = {**self._shared_tags, SET_ID_TAG: self._id, CREATED_AT_TAG: _vm_created(vm)}
        for name in _disk_names(vm):
            try:
                with self._calling("create", f"tagging disk {name}"):
                    poller = await self._compute.disks.begin_update(
                        self._group, name, cast(Any, {"tags": tags})
                    )
                    await poller.result()
            except CloudError as exc:
                # The disk is deleted with its VM (deleteOption Delete): an
                # untagged disk is not lost, only unknown to the sweep.
                self._logger.warning(
                    "could not tag disk %s of VM %s: %s",
                    name,
                    vm.get("name"),
                    exc,
                    extra={"instance_id": vm.get("name"), "instance_set_id": self._id},
                )

    # -- list, tags, destroy ------------------------------------------------

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every VM of this set carrying all of ``tags``: all pages of the
        resource group's VMs, filtered here (Azure cannot filter by tag), with
        addresses from one listing of the group's NICs. VMs being deleted,
        stopped or deallocated are included: they still exist and may still
        cost money, so a caller must see them until they are gone.
        RateLimitError when throttled."""
        self._check_open()
        wanted = validate_tags(tags or {})
        with self._metrics.observe("instances"):
            vms = await self._list_vms()
            mine = [
                vm
                for vm in vms
                if (vm.get("tags") or {}).get(SET_ID_TAG) == self._id
                and all((vm.get("tags") or {}).get(k) == v for k, v in wanted.items())
            ]
            addresses: dict[str, str] = {}
            if mine:
                addresses = {
                    str(nic.get("id", "")).lower(): _nic_address(nic)
                    for nic in await self._list_nics()
                }
        user = self._config.admin_username
        return [AzureInstance(self, vm, addresses.get(_primary_nic(vm), ""), user) for vm in mine]

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """Azure's quota families: ``standardDSv5Family`` for Standard_D2s_v5;
        every spot size shares the region's ``lowPriority`` quota."""
        if itype.preemptible:
            return InstanceQuotaGroup("lowPriority")
        match = _SIZE.match(itype.provider_type)
        if match is None:
            return InstanceQuotaGroup(itype.provider_type)
        series, features, version = match.group(1), match.group(2), match.group(3) or ""
        family = f"standard{series.upper()}{features.upper()}{version.lower()}Family"
        return InstanceQuotaGroup(family)

    async def _set_tags(self, name: str, tags: dict[str, str]) -> None:
        self._check_open()
        with self._metrics.observe("set_tags"), self._calling("set_tags", "tagging a VM"):
            poller = await self._compute.virtual_machines.begin_update(
                self._group, name, cast(Any, {"tags": tags})
            )
            await poller.result()

    async def _destroy(self, vm: dict[str, Any]) -> None:
        self._check_open()
        name = str(vm["name"])
        nic_names = [nic_id.rsplit("/", 1)[-1] for nic_id in _nic_ids(vm)]
        with self._metrics.observe("destroy"):
            with self._calling("destroy", f"deleting VM {name}"):
                poller = await self._compute.virtual_machines.begin_delete(self._group, name)
                await poller.result()
            for nic_name in nic_names:
                with self._calling("destroy", f"deleting NIC {nic_name}"):
                    poller = await self._network.network_interfaces.begin_delete(
                        self._group, nic_name
                    )
                    await poller.result()
            for disk_name in _disk_names(vm):
                with self._calling("destroy", f"deleting disk {disk_name}"):
                    poller = await self._compute.disks.begin_delete(self._group, disk_name)
                    await poller.result()
        self._logger.info(
            "destroyed azure VM %s",
            name,
            extra={"instance_id": name, "instance_set_id": self._id},
        )

    # -- the sweep ----------------------------------------------------------

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            delay = interval
            try:
                await self.sweep()
            except CloudError as exc:
                delay = min(interval, _SWEEP_ERROR_DELAY)
                self._logger.warning(
                    "sweep for dangling NICs and disks failed: %s",
                    exc,
                    extra={"instance_set_id": self._id},
                )
            except Exception as exc:  # a bug must not end the sweep for good
                delay = min(interval, _SWEEP_ERROR_DELAY)
                self._logger.error(
                    "sweep for dangling NICs and disks failed unexpectedly: %s",
                    type(exc).__name__,
                    extra={"instance_set_id": self._id},
                )
            self.sweeps += 1
            await anyio.sleep(delay)

    async def sweep(self) -> None:
        """Run one sweep now (the background task runs one every
        ``sweep_interval``): delete the NICs and disks tagged with THIS set's
        id that are detached and older than ``sweep_after`` seconds, by their
        created-at tag (or Azure's timeCreated); never anything else. A
        resource that fails to delete is logged and left for the next sweep;
        a failed listing raises the mapped CloudError."""
        self._check_open()
        now = datetime.now(UTC)

        def dangling(resource: dict[str, Any], attached: bool) -> bool:
            tags = resource.get("tags") or {}
            if tags.get(SET_ID_TAG) != self._id or attached:
                return False
            created = _created_at(tags, _get(resource, "properties", "timeCreated"))
            return (
                created is not None and (now - created).total_seconds() > self._config.sweep_after
            )

        with self._metrics.observe("sweep"):
            for nic in await self._list_nics():
                if dangling(nic, bool(_get(nic, "properties", "virtualMachine"))):
                    await self._sweep_delete("NIC", nic, self._network.network_interfaces)
            for disk in await self._list_disks():
                attached = bool(disk.get("managedBy")) or (
                    _get(disk, "properties", "diskState") not in (None, "Unattached")
                )
                if dangling(disk, attached):
                    await self._sweep_delete("disk", disk, self._compute.disks)

    async def _sweep_delete(self, what: str, resource: dict[str, Any], operations: Any) -> None:
        name = str(resource["name"])
        try:
            with self._calling("sweep", f"deleting dangling {what} {name}"):
                poller = await operations.begin_delete(self._group, name)
                await poller.result()
        except CloudError as exc:
            self._logger.warning("%s", exc, extra={"instance_set_id": self._id})
            return
        self._logger.info("deleted dangling %s %s", what, name, extra={"instance_set_id": self._id})

    async def _stop(self) -> None:
        # To its end whatever cancellation arrives: a half-stopped set would
        # leave its sweep running or its HTTP sessions open.
        await run_critical(self._release)

    async def _release(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            # wait() does not re-raise the sweeper's CancelledError.
            await asyncio.wait([sweeper])
        await self._compute.close()
        await self._network.close()
        if self._owns_credential:
            await self._credential.close()


class _PlainHttpAllowed(SansIOHTTPPolicy[Any, Any]):
    """Lets azure-core's bearer-token policy send the token over plain http,
    as the config allowed (it checks ``enforce_https`` in the request's context)."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        request.context["enforce_https"] = False


@contextlib.contextmanager
def _bounded(what: str) -> Iterator[None]:
    """At most CRITICAL_TIMEOUT seconds for a step that must finish; then a
    CloudError (what the step made is tagged, and left to the sweep)."""
    try:
        with anyio.fail_after(CRITICAL_TIMEOUT):
            yield
    except TimeoutError:
        raise CloudError(f"{what}: no answer within {CRITICAL_TIMEOUT:g} s") from None


def _nic_address(nic: Mapping[str, Any]) -> str:
    configs = _get(nic, "properties", "ipConfigurations") or []
    for config in configs:
        if _get(config, "properties", "primary") is not False:
            address = _get(config, "properties", "privateIPAddress")
            if address:
                return str(address)
    return ""


def _nic_ids(vm: Mapping[str, Any]) -> list[str]:
    refs = _get(vm, "properties", "networkProfile", "networkInterfaces") or []
    return [str(ref["id"]) for ref in refs if isinstance(ref, Mapping) and ref.get("id")]


def _primary_nic(vm: Mapping[str, Any]) -> str:
    refs = _get(vm, "properties", "networkProfile", "networkInterfaces") or []
    for ref in refs:
        if _get(ref, "properties", "primary") is not False and ref.get("id"):
            return str(ref["id"]).lower()
    return ""


def _disk_names(vm: Mapping[str, Any]) -> list[str]:
    storage = _get(vm, "properties", "storageProfile") or {}
    disks = [storage.get("osDisk") or {}, *(storage.get("dataDisks") or [])]
    return [str(d["name"]) for d in disks if isinstance(d, Mapping) and d.get("name")]


def _vm_created(vm: Mapping[str, Any]) -> str:
    return str((vm.get("tags") or {}).get(CREATED_AT_TAG) or datetime.now(UTC).isoformat())


def _default_credential(config: AzureConfig) -> AsyncTokenCredential:
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    options: dict[str, Any] = {}
    if config.authority:
        options["authority"] = config.authority
    if config.client_secret is not None:
        assert config.tenant_id is not None and config.client_id is not None
        return ClientSecretCredential(
            config.tenant_id, config.client_id, config.client_secret.get_secret_value(), **options
        )
    return DefaultAzureCredential(**options)


async def open_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
    *,
    credential: AsyncTokenCredential | None = None,
) -> AzureInstanceSet:
    """Make an Azure InstanceSet, as ``DRIVER.instance_set`` does, with an
    optional ``credential`` (any async ``get_token`` credential) used instead
    of the one the config names; the caller keeps ownership of it.

    The config is validated before any cloud call (ConfigError naming the
    field); the set starts its sweep task, which ``stop()`` ends.
    """
    parsed = parse_config(AzureConfig, config, driver="azure")
    if not isinstance(id, str) or not id:
        raise ValueError("the InstanceSetID must be a non-empty string")
    shared = _azure_tags(tags, room=MAX_TAGS - len(_OWN_TAGS), field="shared resource tags")
    owns = credential is None
    instance_set = AzureInstanceSet(
        parsed,
        id,
        shared,
        logger,
        CallMetrics(registry, "azure"),
        credential if credential is not None else _default_credential(parsed),
        owns_credential=owns,
    )
    instance_set._start()
    return instance_set


async def _new_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
) -> AzureInstanceSet:
    return await open_instance_set(config, id, tags, logger, registry)


#: The Azure driver; ``cloudvm.load_driver("azure")`` returns it.
DRIVER = driver_func(_new_instance_set)
