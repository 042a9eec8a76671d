"""One GCE instance, as of the listing or create that produced it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncssh

from cloudvm import InstancePrice, InstanceTags, InstanceType
from cloudvm.driverkit import InstanceBase

from ._reads import InstanceRecord
from ._tags import gce_tags
from ._verify import verify_host_key

if TYPE_CHECKING:
    from ._instance_set import GCEInstanceSet

__all__ = ["GCEInstance"]


class GCEInstance(InstanceBase):
    """One GCE instance, as of the listing or create that produced it: its
    id is its name (unique among this set's instances in the project), its
    provider type the machine type (``"n2-standard-4"``), its address the
    internal IP (or external, per the config's ``address``), its remote user
    the config's ``admin_username``, which the SSH key is authorised for."""

    def __init__(self, instance_set: GCEInstanceSet, record: InstanceRecord) -> None:
        super().__init__(
            id=record.name,
            provider_type=record.machine_type,
            all_tags=record.tags,
            address=record.address,
            remote_user=instance_set.remote_user,
        )
        self._set = instance_set
        self._zone = record.zone
        self._secret = record.secret
        self._created_at = record.created_at

    @property
    def zone(self) -> str:
        """The zone the instance runs in."""
        return self._zone

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the user's tags: first the metadata item (the source of
        truth), then the derived labels. The set id and the secret are kept.

        Both calls run to their end even when the caller is cancelled (by
        ``Task.cancel()`` or an anyio scope; it then sees its cancellation),
        and a failed label write puts the old metadata item back: the
        instance is left with its old tags or its new ones, never a mix.
        (Should putting it back fail too, that is logged.) Raises ValueError
        for invalid tags before any call; after a CloudError the tags may be
        old or new."""
        await self._set._set_tags(self, gce_tags(tags))

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """GCE publishes no per-instance price history: one entry, the
        type's configured ``price`` (which includes added scratch) since the
        instance was created; empty when the creation time is unknown."""
        if self._created_at is None:
            return []
        return [InstancePrice(self._created_at, itype.price)]

    async def destroy(self) -> None:
        """Delete the instance (and its auto-deleted disks) and wait for the
        deletion; an instance already gone is not an error."""
        await self._set._destroy(self)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove ``key`` is this instance's host key.

        An instance without a secret (or with an empty one) is refused at
        once: anyone able to create instances could have tagged it into the
        set, and an empty secret would be "proven" by any host answering an
        empty body. Then, out of band: the guest agent publishes the host
        keys as guest attributes (``hostkeys/``), read here through the
        Compute API. If a key of ``key``'s algorithm is published, ``key``
        must be it. Otherwise (none published yet, or the API refuses),
        through ``conn``: GET the ``cloudvm-secret`` metadata attribute from
        the instance's metadata server (``Metadata-Flavor: Google``, which
        the answer must carry too) and compare it in constant time with the
        secret create stored, the whole exchange within one deadline
        (10 s). Text the host chose reaches errors only escaped
        (:func:`cloudvm.driverkit.printable`).

        Returns None when the key is proven. Raises HostKeyError when the
        secret is missing or empty, the key or the secret is wrong, or the
        secret cannot be read in time; NotImplementedError when no key is
        published and ``conn`` is None.
        """
        await verify_host_key(
            str(self), self._secret, lambda: self._set._published_host_keys(self), key, conn
        )
