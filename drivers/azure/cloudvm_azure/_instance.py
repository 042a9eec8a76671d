"""The Azure Instance: one VM as of the listing or create that produced it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from cloudvm import HostKeyError, InstancePrice, InstanceTags, InstanceType
from cloudvm.driverkit import SECRET_TAG, InstanceBase

from . import _verification
from ._resources import disk_names, field, nic_names
from ._tags import MAX_TAGS, OWN_VM_TAGS, azure_tags, created_at

if TYPE_CHECKING:
    from ._instance_set import AzureInstanceSet

__all__ = ["AzureInstance"]


class AzureInstance(InstanceBase):
    """One Azure VM as of the listing or create that produced it.

    It keeps only what its methods need from the VM's body (its ``name``,
    ``tags`` and ``properties``): its size, creation time and the names of
    its NICs and disks.
    """

    def __init__(
        self,
        instance_set: AzureInstanceSet,
        *,
        name: str,
        tags: Mapping[str, str],
        properties: Mapping[str, Any],
        address: str,
        remote_user: str,
    ) -> None:
        super().__init__(
            id=name,
            provider_type=str(field(properties, "hardwareProfile", "vmSize") or ""),
            all_tags=tags,
            address=address,
            remote_user=remote_user,
        )
        self._set = instance_set
        self._time_created: object = properties.get("timeCreated")
        self._nic_names = nic_names(properties)
        self._disk_names = disk_names(properties)

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the VM's tags with ``tags``, keeping the set's own tags
        (set id, secret, created-at). ValueError for bad tags before any call."""
        checked = azure_tags(tags, room=MAX_TAGS - len(OWN_VM_TAGS))
        await self._set._set_tags(self.id, {**checked, **self._own_tags()})
        self._replace_user_tags(checked)

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """One price, ``itype.price`` (the caller's, which includes any added
        scratch), since the VM was created; empty when the creation time is
        unknown. The driver does not read Azure's price sheets."""
        created = created_at(self._all_tags, self._time_created)
        return [] if created is None else [InstancePrice(created, itype.price)]

    async def destroy(self) -> None:
        """Delete the VM, then its NIC and disks. A VM already gone is no error."""
        await self._set._destroy(self.id, self._nic_names, self._disk_names)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove the host through Azure IMDS: through ``conn`` ask
        169.254.169.254 (``Metadata: true``) for the instance's metadata and
        compare the ``cloudvm-secret`` entry of its ``compute.tagsList`` with
        the secret create stored, in constant time. The host is not proven
        yet: the exchange has one deadline (IMDS_TIMEOUT seconds, opening
        the channel included), the answer is bounded and never decompressed
        (:func:`cloudvm.driverkit.metadata_get`), and text the host chose
        reaches errors only escaped.

        Returns None when the secrets match. Raises HostKeyError when the VM
        carries no secret, or the host's answer is missing, late, malformed
        or holds another secret; NotImplementedError when ``conn`` is None.
        """
        if conn is None:
            raise NotImplementedError("azure verifies host keys only through a live connection")
        expected = self._all_tags.get(SECRET_TAG)
        if not expected:
            raise HostKeyError(f"{self}: the VM carries no {SECRET_TAG} tag to check against")
        await _verification.verify_through_imds(conn, expected, self)
