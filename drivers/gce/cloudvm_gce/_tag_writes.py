"""Replacing an instance's tags: the metadata item, then the derived labels,
so that the instance ends with its old tags or its new ones, never a mix."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from google.cloud import compute_v1

from cloudvm import CloudError, InstanceTags
from cloudvm.driverkit import SET_ID_TAG

from ._api import ComputeAPI, TransportError
from ._config import GCEConfig
from ._operations import Operations
from ._reads import get_instance, metadata_item
from ._tags import TAGS_ITEM, encode_tags, labels_for

__all__ = ["TagWriter"]

_SET_TAGS_ATTEMPTS = 3  # fingerprint races before set_tags gives up
_DERIVED_LABEL = re.compile(r"^c-[a-z0-9_-]*-[0-9a-f]{12}$")


class TagWriter:
    """Writes the tags of one InstanceSet's instances."""

    def __init__(
        self,
        config: GCEConfig,
        set_id: str,
        api: ComputeAPI,
        operations: Operations,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._config = config
        self._id = set_id
        self._api = api
        self._operations = operations
        self._logger = logger

    async def replace(
        self, zone: str, name: str, tags: InstanceTags, applied: Callable[[], None]
    ) -> None:
        """Write ``tags`` to the metadata item, then the derived labels; after
        an error once the metadata may have been written, put the old item
        back so that the metadata and the labels agree (see
        :meth:`_reconcile`), then raise it. ``applied()`` is called once the
        instance is known to carry ``tags`` (also before such an error, when
        the labels turn out to have been written after all)."""
        original: str | None = None
        written = False
        for attempt in range(1, _SET_TAGS_ATTEMPTS + 1):
            try:
                current = await get_instance(self._api, self._config, zone, name)
                if metadata_item(current.metadata, SET_ID_TAG) != self._id:
                    raise CloudError(f"GCE instance {name} does not belong to this InstanceSet")
                if not written:
                    original = metadata_item(current.metadata, TAGS_ITEM)
                try:
                    await self._put_tags_item(zone, name, current.metadata, encode_tags(tags))
                except TransportError:
                    written = True  # no answer: it may have been applied
                    raise
                written = True
                await self._put_labels(zone, name, current, tags)
            except CloudError as exc:
                # A stale fingerprint means someone changed the instance
                # between our get and set: read it again.
                if exc.code == "conditionNotMet" and attempt < _SET_TAGS_ATTEMPTS:
                    continue
                if written and await self._reconcile(zone, name, tags, original):
                    applied()
                raise
            applied()
            return

    async def _reconcile(
        self, zone: str, name: str, tags: InstanceTags, original: str | None
    ) -> bool:
        """After a failed label write: unless the labels are ``tags``' after
        all (a call whose answer was lost), put the metadata item back to
        ``original`` so that it agrees with the labels, which stayed old.
        Returns True when the instance is left with ``tags``."""
        try:
            current = await get_instance(self._api, self._config, zone, name)
            derived = {k: v for k, v in current.labels.items() if _DERIVED_LABEL.match(k)}
            if derived == labels_for(self._id, tags):
                return True
            await self._put_tags_item(zone, name, current.metadata, original)
        except CloudError as exc:
            self._logger.warning(
                "GCE set_tags of %s failed and the old tags could not be put back (%s); "
                "listings by tag miss it until its tags are set again",
                name,
                exc.code,
                extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
            )
        return False

    async def _put_tags_item(
        self, zone: str, name: str, metadata: compute_v1.Metadata, value: str | None
    ) -> None:
        """Set the :data:`TAGS_ITEM` metadata item to ``value`` (None: remove
        it), keeping every other item; ``metadata`` gives the fingerprint."""
        cfg = self._config
        items = [
            compute_v1.Items(key=i.key, value=i.value) for i in metadata.items if i.key != TAGS_ITEM
        ]
        if value is not None:
            items.append(compute_v1.Items(key=TAGS_ITEM, value=value))
        request = compute_v1.SetMetadataInstanceRequest(
            project=cfg.project,
            zone=zone,
            instance=name,
            metadata_resource=compute_v1.Metadata(fingerprint=metadata.fingerprint, items=items),
            request_id=str(uuid.uuid4()),
        )
        op = await self._api.call(
            "instances.setMetadata",
            lambda c: c.instances.set_metadata_unary(
                request=request, retry=None, timeout=cfg.call_timeout
            ),
        )
        await self._operations.finish(zone, op, f"setMetadata of {name}")

    async def _put_labels(
        self, zone: str, name: str, current: compute_v1.Instance, tags: InstanceTags
    ) -> None:
        """Replace the derived labels of ``current`` with those of ``tags``,
        keeping labels that are not ours."""
        cfg = self._config
        labels = {k: v for k, v in current.labels.items() if not _DERIVED_LABEL.match(k)}
        labels.update(labels_for(self._id, tags))
        request = compute_v1.SetLabelsInstanceRequest(
            project=cfg.project,
            zone=zone,
            instance=name,
            instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(
                label_fingerprint=current.label_fingerprint, labels=labels
            ),
            request_id=str(uuid.uuid4()),
        )
        op = await self._api.call(
            "instances.setLabels",
            lambda c: c.instances.set_labels_unary(
                request=request, retry=None, timeout=cfg.call_timeout
            ),
        )
        await self._operations.finish(zone, op, f"setLabels of {name}")
