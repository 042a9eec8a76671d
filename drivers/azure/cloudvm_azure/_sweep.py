"""The sweep: deleting the NICs and disks a set's interrupted creates left behind."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

from cloudvm import CloudError, InstanceSetID
from cloudvm.driverkit import SET_ID_TAG

from ._calls import ARMCalls
from ._resources import field
from ._tags import created_at

__all__ = ["SWEEP_ERROR_DELAY", "Sweep"]

SWEEP_ERROR_DELAY = 5.0  # seconds before the next sweep after a failed one


class Sweep:
    """One set's sweep: :meth:`once` deletes the NICs and disks tagged with
    the set's id that are detached and older than ``sweep_after`` seconds;
    :meth:`forever` repeats a pass, counting them in :attr:`passes`."""

    def __init__(
        self,
        arm: ARMCalls,
        set_id: InstanceSetID,
        sweep_after: float,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._arm = arm
        self._id = set_id
        self._sweep_after = sweep_after
        self._logger = logger
        #: Passes of :meth:`forever` completed, failed ones included.
        self.passes = 0

    async def forever(self, interval: float, one_pass: Callable[[], Awaitable[None]]) -> None:
        """Run ``one_pass`` every ``interval`` seconds (sooner again after a
        failure) until cancelled; a failure is logged, never raised."""
        while True:
            delay = interval
            try:
                await one_pass()
            except CloudError as exc:
                delay = min(interval, SWEEP_ERROR_DELAY)
                self._logger.warning(
                    "sweep for dangling NICs and disks failed: %s",
                    exc,
                    extra={"instance_set_id": self._id},
                )
            except Exception as exc:  # a bug must not end the sweep for good
                delay = min(interval, SWEEP_ERROR_DELAY)
                self._logger.error(
                    "sweep for dangling NICs and disks failed unexpectedly: %s",
                    type(exc).__name__,
                    extra={"instance_set_id": self._id},
                )
            self.passes += 1
            await anyio.sleep(delay)

    async def once(self) -> None:
        """One pass; a resource that fails to delete is logged and left for
        the next pass; a failed listing raises the mapped CloudError."""
        now = datetime.now(UTC)
        for nic in await self._arm.list_nics():
            if self._dangling(nic, bool(field(nic, "properties", "virtualMachine")), now):
                await self._delete("NIC", nic, self._arm.network.network_interfaces)
        for disk in await self._arm.list_disks():
            attached = bool(disk.get("managedBy")) or (
                field(disk, "properties", "diskState") not in (None, "Unattached")
            )
            if self._dangling(disk, attached, now):
                await self._delete("disk", disk, self._arm.compute.disks)

    def _dangling(self, resource: Mapping[str, Any], attached: bool, now: datetime) -> bool:
        tags = resource.get("tags") or {}
        if tags.get(SET_ID_TAG) != self._id or attached:
            return False
        created = created_at(tags, field(resource, "properties", "timeCreated"))
        return created is not None and (now - created).total_seconds() > self._sweep_after

    async def _delete(self, what: str, resource: Mapping[str, Any], operations: Any) -> None:
        name = str(resource["name"])
        try:
            await self._arm.delete(
                operations, name, kind="sweep", what=f"deleting dangling {what} {name}"
            )
        except CloudError as exc:
            self._logger.warning("%s", exc, extra={"instance_set_id": self._id})
            return
        self._logger.info("deleted dangling %s %s", what, name, extra={"instance_set_id": self._id})
