"""The Azure InstanceSet: create, list, tag and destroy VMs, and sweep what is left."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import asyncssh
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError

from cloudvm import (
    CloudError,
    ImageID,
    InitCommand,
    Instance,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from cloudvm.driverkit import (
    SECRET_TAG,
    SET_ID_TAG,
    CallMetrics,
    InstanceSetBase,
    check_create_arguments,
    new_secret,
    run_critical,
    validate_tags,
)

from ._calls import ARMCalls, bounded
from ._config import AzureConfig
from ._instance import AzureInstance
from ._resources import (
    disk_names,
    image_reference,
    nic_address,
    nic_body,
    primary_nic_id,
    vm_body,
)
from ._sweep import Sweep
from ._tags import CREATED_AT_TAG, MAX_TAGS, OWN_VM_TAGS, azure_tags

__all__ = ["CLEANUP_TIMEOUT", "AzureInstanceSet"]

CLEANUP_TIMEOUT = 300.0  # seconds a failed create may spend deleting what it made
# Standard_E8as_v5 -> ("E", "as", "_v5")
_SIZE = re.compile(r"^(?:Standard|Basic)_([A-Za-z]+)\d+(?:-\d+)?([a-z]*)(?:_([A-Za-z0-9]+))*$")


def _slug(text: str, size: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:size].strip("-") or "set"


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
        self._arm = ARMCalls(config, credential)
        self._group = config.resource_group
        network_group = config.network_resource_group or config.resource_group
        self._subnet_id = (
            f"/subscriptions/{config.subscription_id}/resourceGroups/{network_group}"
            f"/providers/Microsoft.Network/virtualNetworks/{config.network}/subnets/{config.subnet}"
        )
        self._sweep = Sweep(self._arm, set_id, config.sweep_after, logger)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def sweeps(self) -> int:
        """Completed sweep passes of the background task (for tests and metrics)."""
        return self._sweep.passes

    def _start(self) -> None:
        if self._config.sweep_interval is not None:
            # Owned, not fire-and-forget: stop() cancels and awaits it. A task
            # rather than a task group held open, so that stop() may run in
            # another task than the one that made the set.
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep.forever(self._config.sweep_interval, self.sweep),
                name=f"azure-sweep-{self._id}",
            )

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
        args = check_create_arguments(itype, image_id, tags, init_command, public_key)
        azure_tags(args.tags, room=MAX_TAGS - len(OWN_VM_TAGS))
        image = image_reference(args.image_id)
        key = public_key or asyncssh.generate_private_key("ssh-ed25519")
        key_data = key.export_public_key("openssh").decode().strip()
        config = self._config
        vm_name = f"{config.name_prefix}-{_slug(self._id, 24)}-{secrets.token_hex(6)}"
        nic_name = f"{vm_name}-nic"
        created = datetime.now(UTC).isoformat()
        ours = {SET_ID_TAG: self._id, CREATED_AT_TAG: created}
        nic_request = nic_body(config.location, self._subnet_id, {**self._shared_tags, **ours})
        # Each step that makes something runs to its end whatever cancellation
        # arrives (run_critical), so that what it made is known: a cancelled
        # NIC creation deletes the NIC again; a VM PUT either made a VM that
        # holds the NIC, or was refused and the NIC is deleted. Only waiting
        # for the VM's provisioning may be cut short: the VM is tagged, and
        # listed, from its PUT on.
        with self._metrics.observe("create_nic"):
            nic = await run_critical(
                lambda: self._create_nic(nic_name, nic_request),
                rollback=lambda _: self._cleanup_failed(None, nic_name, "a cancelled create"),
            )
        nic_id = str(nic["id"])
        vm_request = vm_body(config, vm_name, nic_id, itype, image, args.init_command, key_data)
        vm_request["tags"] = {**args.tags, **ours, SECRET_TAG: new_secret()}
        with self._metrics.observe("create"):
            poller = await run_critical(lambda: self._put_vm(vm_name, vm_request, nic_name))
            try:
                with self._arm.calling("create", "creating a VM"):
                    vm: Mapping[str, Any] = await poller.result()
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
        return AzureInstance(
            self,
            name=str(vm["name"]),
            tags=vm.get("tags") or {},
            properties=vm.get("properties") or {},
            address=nic_address(nic),
            remote_user=config.admin_username,
        )

    async def _create_nic(self, name: str, body: dict[str, Any]) -> Mapping[str, Any]:
        """Create the NIC and wait until it exists (a critical section: at
        most CRITICAL_TIMEOUT seconds)."""
        with self._arm.calling("create", "creating a NIC"), bounded("creating a NIC"):
            poller = await self._arm.network.network_interfaces.begin_create_or_update(
                self._group, name, cast(Any, body)
            )
            return cast(Mapping[str, Any], await poller.result())

    async def _put_vm(self, vm_name: str, body: dict[str, Any], nic_name: str) -> Any:
        """Ask Azure for the VM (a critical section): returns the poller of
        its creation. When Azure refuses, or the answer is lost, deletes the
        NIC at once (NICs count against quota; one a VM took is kept by it),
        then raises the mapped error."""
        try:
            with self._arm.calling("create", "creating a VM"), bounded("creating a VM"):
                return await self._arm.compute.virtual_machines.begin_create_or_update(
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
                    await self._arm.delete(
                        self._arm.compute.virtual_machines,
                        vm_name,
                        kind="destroy",
                        what="deleting a failed VM",
                    )
                await self._arm.delete(
                    self._arm.network.network_interfaces,
                    nic_name,
                    kind="destroy",
                    what="deleting the NIC of a VM not made",
                )
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

    async def _tag_disks(self, vm: Mapping[str, Any]) -> None:
        """Tag the disks Azure made for the VM (it does not copy the VM's tags
        to them), so that a disk left behind is known to be ours."""
        created = (vm.get("tags") or {}).get(CREATED_AT_TAG) or datetime.now(UTC).isoformat()
        tags = {**self._shared_tags, SET_ID_TAG: self._id, CREATED_AT_TAG: str(created)}
        for name in disk_names(vm.get("properties") or {}):
            try:
                with self._arm.calling("create", f"tagging disk {name}"):
                    poller = await self._arm.compute.disks.begin_update(
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
        addresses from one listing of the group's NICs, made at the same time.
        VMs being deleted, stopped or deallocated are included: they still
        exist and may still cost money, so a caller must see them until they
        are gone. RateLimitError when throttled."""
        self._check_open()
        wanted = {SET_ID_TAG: self._id, **validate_tags(tags or {})}
        with self._metrics.observe("instances"):
            vms, nics = await self._arm.list_vms_and_nics()
        # ARM's JSON, as listed: a VM without a tags object is none of ours.
        mine: list[tuple[str, Mapping[str, str], Mapping[str, Any], str]] = []
        for vm in vms:
            vm_tags = vm.get("tags")
            if isinstance(vm_tags, dict) and all(vm_tags.get(k) == v for k, v in wanted.items()):
                properties = vm.get("properties")
                if not isinstance(properties, dict):
                    properties = {}
                mine.append((str(vm["name"]), vm_tags, properties, primary_nic_id(properties)))
        # Only the NICs of the VMs listed are read.
        addresses = dict.fromkeys(nic_id for *_, nic_id in mine)
        for nic in nics:
            nic_id = str(nic.get("id", "")).lower()
            if nic_id in addresses:
                addresses[nic_id] = nic_address(nic)
        user = self._config.admin_username
        return [
            AzureInstance(
                self,
                name=name,
                tags=vm_tags,
                properties=properties,
                address=addresses.get(nic_id) or "",
                remote_user=user,
            )
            for name, vm_tags, properties, nic_id in mine
        ]

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
        with self._metrics.observe("set_tags"), self._arm.calling("set_tags", "tagging a VM"):
            poller = await self._arm.compute.virtual_machines.begin_update(
                self._group, name, cast(Any, {"tags": tags})
            )
            await poller.result()

    async def _destroy(self, name: str, nics: tuple[str, ...], disks: tuple[str, ...]) -> None:
        self._check_open()
        arm = self._arm
        with self._metrics.observe("destroy"):
            await arm.delete(
                arm.compute.virtual_machines, name, kind="destroy", what=f"deleting VM {name}"
            )
            for nic in nics:
                await arm.delete(
                    arm.network.network_interfaces, nic, kind="destroy", what=f"deleting NIC {nic}"
                )
            for disk in disks:
                await arm.delete(
                    arm.compute.disks, disk, kind="destroy", what=f"deleting disk {disk}"
                )
        self._logger.info(
            "destroyed azure VM %s",
            name,
            extra={"instance_id": name, "instance_set_id": self._id},
        )

    # -- the sweep ----------------------------------------------------------

    async def sweep(self) -> None:
        """Run one sweep now (the background task runs one every
        ``sweep_interval``): delete the NICs and disks tagged with THIS set's
        id that are detached and older than ``sweep_after`` seconds, by their
        created-at tag (or Azure's timeCreated); never anything else. A
        resource that fails to delete is logged and left for the next sweep;
        a failed listing raises the mapped CloudError."""
        self._check_open()
        with self._metrics.observe("sweep"):
            await self._sweep.once()

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
        await self._arm.close()
        if self._owns_credential:
            await self._credential.close()
