"""The EC2 Instance: what a listing or create saw of one instance, and the
calls about it (tags, termination, host verification), made through its set."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncssh

from cloudvm import HostKeyError, InstancePrice, InstanceTags, InstanceType
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG, InstanceBase

from ._prices import normalize_prices, scratch_price_per_hour
from ._verification import verify_through_imds

if TYPE_CHECKING:
    from ._instance_set import EC2InstanceSet

__all__ = ["EC2Instance"]


class EC2Instance(InstanceBase):
    """One EC2 instance, as of the listing or create that produced it.

    ``data`` is the instance as DescribeInstances or RunInstances returns
    it; ``tags``, when given, replaces its ``Tags`` (a create knows them
    before EC2 lists them). ``address`` is the private IP (or the public
    one, with ``address="public"``), "" until EC2 has assigned it;
    ``remote_user`` is the config's ``admin_username``.
    """

    def __init__(
        self,
        instance_set: EC2InstanceSet,
        data: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        config = instance_set._config
        ip = data.get("PublicIpAddress" if config.address == "public" else "PrivateIpAddress")
        if tags is None:
            # What many instances share (tag keys, the set id, type, zone,
            # subnet, state) is kept once, not once per instance: a listing
            # of thousands is held for as long as the caller wants.
            tags = {sys.intern(t["Key"]): t["Value"] for t in data.get("Tags", [])}
            if tags.get(SET_ID_TAG) == instance_set._id:
                tags[SET_ID_TAG] = instance_set._id
        super().__init__(
            id=str(data["InstanceId"]),
            provider_type=sys.intern(str(data.get("InstanceType", ""))),
            all_tags=tags,
            address=str(ip or ""),
            remote_user=config.admin_username,
        )
        self._set = instance_set
        self._zone = sys.intern(str(data.get("Placement", {}).get("AvailabilityZone") or ""))
        self._subnet = sys.intern(str(data.get("SubnetId") or ""))
        self._spot = data.get("InstanceLifecycle") == "spot"
        launched = data.get("LaunchTime")
        # botocore gives each timestamp a tzinfo object of its own (~0.4 KB):
        # the same instant in UTC shares one.
        self._launched = (
            launched.astimezone(UTC) if isinstance(launched, datetime) else datetime.now(UTC)
        )
        self._state = sys.intern(str(data.get("State", {}).get("Name", "")))

    @property
    def availability_zone(self) -> str:
        """Where the instance runs ("" if EC2 did not say)."""
        return self._zone

    @property
    def subnet_id(self) -> str:
        """The instance's subnet ("" if EC2 did not say)."""
        return self._subnet

    @property
    def state(self) -> str:
        """EC2's state name as of the listing: pending, running, stopping, ..."""
        return self._state

    @property
    def preemptible(self) -> bool:
        """True for a spot instance."""
        return self._spot

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the instance's tags with ``tags``; the set's own tags stay.

        Reads the instance's current tags first, so that keys added elsewhere
        since this snapshot are removed too, and refuses (CloudError) to touch
        an instance that does not carry this set's id. Invalid tags raise
        ValueError before any call.

        Only what differs is sent: CreateTags for new and changed values,
        then DeleteTags for keys that go. Once the first call is made, the
        second is made too, even if the caller is cancelled meanwhile (the
        cancellation is re-raised after it). If the second call is throttled
        or gets no answer, it is repeated (after EC2's hold-off) for up to
        ``set_tags_timeout`` seconds; if it still fails, or EC2 refuses it,
        the old tags are put back and the error raised. So after any error or
        cancellation the instance has its old tags or its new ones; only if
        putting the old ones back fails too does the CloudError raised say
        that it has neither.
        """
        checked = self._set._checked_tags(tags, field="tags")
        await self._set._replace_tags(self.id, checked)
        self._replace_user_tags(checked)

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """Spot instances: the spot prices of the type in the instance's zone
        as of the last listing, newest first. On-demand instances: the type's
        price since launch. Both include the added scratch volume's cost."""
        extra = scratch_price_per_hour(itype.added_scratch, self._set._config.ebs_price)
        if self._spot:
            prices = self._set._spot_prices.history(self.provider_type, self._zone)
        else:
            prices = [InstancePrice(self._launched, itype.price)]
        return normalize_prices(InstancePrice(p.start_time, p.price + extra) for p in prices)

    async def destroy(self) -> None:
        """Terminate the instance; its scratch volume and NIC go with it.
        An instance that is already gone is not an error."""
        await self._set._terminate(self.id)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove the host through EC2's metadata service, as seen through
        ``conn``: IMDSv2 (token PUT, then GET) of the instance id and of the
        instance's secret (its ``cloudvm-secret`` tag, or the user-data line
        in ``secret_storage="user-data"`` mode), compared in constant time
        with the secret this instance was created with.

        Raises HostKeyError if the answers differ or cannot be read, and for
        an instance of the set that has no secret or an empty one (one this
        driver did not create: anyone may tag an instance into the set, and
        nothing proves such a host). Raises NotImplementedError without a
        connection.
        """
        expected = self._all_tags.get(SECRET_TAG)
        if not expected:
            raise HostKeyError(
                f"{self}: the instance has no secret (its {SECRET_TAG} tag is missing or "
                "empty: this driver did not create it), so no host can be proven to be it"
            )
        if conn is None:
            raise NotImplementedError(
                f"{self}: EC2 host keys are verified only through a live connection"
            )
        await verify_through_imds(
            conn, instance_id=self.id, secret=expected, config=self._set._config, who=str(self)
        )
