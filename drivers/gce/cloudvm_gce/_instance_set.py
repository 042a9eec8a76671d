"""The GCE InstanceSet: create (zone by zone), list, and the per-instance
calls its instances make."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from typing import Any

import anyio
import asyncssh
from google.cloud import compute_v1

from cloudvm import (
    CapacityError,
    CloudError,
    ImageID,
    InitCommand,
    Instance,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    QuotaError,
    RateLimitError,
)
from cloudvm.driverkit import (
    SECRET_TAG,
    CallMetrics,
    InstanceSetBase,
    check_create_arguments,
    new_secret,
    run_critical,
    validate_tags,
)

from ._api import ComputeAPI, NotFoundError, TransportError
from ._config import GCEConfig
from ._errors import ALREADY_EXISTS_CODES, quota_region
from ._insert_body import instance_body
from ._instance import GCEInstance
from ._operations import DONE, Operations, operation_error
from ._reads import (
    InstanceRecord,
    address_of,
    created_at,
    get_instance,
    list_zone,
    metadata_item,
)
from ._tag_writes import TagWriter
from ._tags import gce_tags, label_filter
from ._verify import published_host_keys

__all__ = ["GCEInstanceSet"]

# A machine type's family: "n2-standard-4" -> "n2"; types without a family
# prefix ("custom-4-8192", "f1-micro", "g1-small") are N1.
_FAMILY = re.compile(r"^([a-z][0-9]+[a-z]?)-")


def _region_of(zone: str) -> str:
    # "us-central1-a" -> "us-central1"
    return zone.rsplit("-", 1)[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


class GCEInstanceSet(InstanceSetBase):
    """The GCE InstanceSet; see the ``gce`` driver and the README."""

    def __init__(
        self,
        config: GCEConfig,
        set_id: InstanceSetID,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        metrics: CallMetrics,
        api: ComputeAPI,
    ) -> None:
        super().__init__()
        self._config = config
        self._id = set_id
        self._logger = logger
        self._metrics = metrics
        self._api = api
        self._operations = Operations(config, api, logger)
        self._tag_writer = TagWriter(config, set_id, api, self._operations, logger)
        self._next_zone = 0

    @property
    def remote_user(self) -> str:
        """The config's ``admin_username``: the user the SSH key is authorised for."""
        return self._config.admin_username

    # -- create -----------------------------------------------------------

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Create one instance, trying each configured zone in turn.

        The instance gets a fresh name and, per zone, a ``requestId``: an
        insert whose answer was lost is sent again with the same id, so GCE
        makes at most one instance. Its labels and metadata (tags, set id,
        secret, startup script, SSH key) are part of the insert itself, so a
        cancelled or failed create never leaves an untagged instance. Waits
        for the insert operation (at most ``operation_timeout``, after which
        the instance is returned anyway).

        Zones are tried in turn only for capacity: a quota error (regional,
        whether for ``CPUS`` or a family's ``N2_CPUS``) skips every other
        zone of its region, and a project-wide one ends the create.

        Raises ValueError/TypeError for bad input before any cloud call;
        CapacityError only when every zone lacked capacity (the last one's);
        QuotaError when the quota of every configured region (or the
        project's) is used up; RateLimitError or CloudError otherwise.
        """
        self._check_open()
        args = check_create_arguments(
            itype,
            image_id,
            tags,
            init_command,
            public_key,
            image_id_is="an image URL or image family URL",
        )
        gce_tags(args.tags)
        base = uuid.uuid4()
        name = f"cvm-{hashlib.sha256(self._id.encode()).hexdigest()[:6]}-{base.hex[:20]}"
        secret = new_secret()
        zones = self._config.zones
        start = self._next_zone % len(zones)
        last_capacity: CapacityError | None = None
        last_quota: QuotaError | None = None
        out_of_quota: set[str] = set()  # regions whose quota is used up
        with self._metrics.observe("create"):
            for zone in zones[start:] + zones[:start]:
                if _region_of(zone) in out_of_quota:
                    continue
                body = instance_body(
                    self._config,
                    self._id,
                    name=name,
                    zone=zone,
                    itype=itype,
                    image_id=image_id,
                    tags=args.tags,
                    init_command=args.init_command,
                    public_key=public_key,
                    secret=secret,
                )
                try:
                    found = await self._insert(zone, body, str(uuid.uuid5(base, zone)), secret)
                except QuotaError as exc:
                    # Quota is counted per region (or per project), never per
                    # zone: no other zone of this region can do better. This
                    # comes before CapacityError: a family quota is both.
                    region = quota_region(exc)
                    if region is None:
                        raise
                    last_quota = exc
                    out_of_quota.update((region, _region_of(zone)))
                    if all(_region_of(z) in out_of_quota for z in zones):
                        raise
                    self._logger.warning(
                        "GCE quota exceeded in region %s for %s; trying the zones of other regions",
                        region,
                        itype.provider_type,
                        extra={"zone": zone, "instance_set_id": self._id, "code": exc.code},
                    )
                    continue
                except CapacityError as exc:
                    last_capacity = exc
                    self._logger.warning(
                        "GCE zone %s has no capacity for %s; trying the next zone",
                        zone,
                        itype.provider_type,
                        extra={"zone": zone, "instance_set_id": self._id, "code": exc.code},
                    )
                    continue
                self._next_zone = zones.index(zone)
                shown = compute_v1.Instance.pb(found) if found is not None else None
                self._logger.info(
                    "created GCE instance %s in %s",
                    name,
                    zone,
                    extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
                )
                record = InstanceRecord(
                    name=name,
                    zone=zone,
                    machine_type=itype.provider_type,
                    tags=args.tags,
                    secret=secret,
                    address=address_of(shown, self._config.address) if shown is not None else "",
                    created_at=created_at(shown) if shown is not None else None,
                )
                return GCEInstance(self, record)
            # Every zone failed: capacity may come back later, quota only
            # when something is destroyed.
            error = last_capacity or last_quota
            assert error is not None
            raise error

    async def _insert(
        self, zone: str, body: compute_v1.Instance, request_id: str, secret: str
    ) -> compute_v1.Instance | None:
        """Insert ``body`` in ``zone`` and wait for the operation; return the
        instance as GCE then shows it (None if it could not be read)."""
        cfg = self._config
        request = compute_v1.InsertInstanceRequest(
            project=cfg.project, zone=zone, instance_resource=body, request_id=request_id
        )
        op: compute_v1.Operation | None = None
        for attempt in range(1, cfg.insert_attempts + 1):
            try:
                op = await self._api.call(
                    "instances.insert",
                    lambda c: c.instances.insert_unary(
                        request=request, retry=None, timeout=cfg.call_timeout
                    ),
                )
                break
            except TransportError:
                # The insert may have happened: sending it again with the same
                # requestId returns the first insert's operation.
                if attempt == cfg.insert_attempts:
                    raise
                self._logger.warning(
                    "GCE insert of %s lost its answer; sending it again with the same requestId",
                    body.name,
                    extra={"instance_id": body.name, "zone": zone, "attempt": attempt},
                )
            except CloudError as exc:
                if exc.code not in ALREADY_EXISTS_CODES:
                    raise
                return await self._adopt(zone, body.name, secret, exc)
        assert op is not None
        op = await self._operations.wait(zone, op)
        if op.status == DONE:
            error = operation_error(op, f"insert of {body.name} in {zone}")
            if error is not None and error.code in ALREADY_EXISTS_CODES:
                # A resent insert can also learn of the first one this way:
                # accepted, then its operation finds the name taken.
                return await self._adopt(zone, body.name, secret, error)
            if error is not None:
                raise error
        try:
            return await get_instance(self._api, cfg, zone, body.name)
        except CloudError:
            return None  # created; a later listing shows its address

    async def _adopt(
        self, zone: str, name: str, secret: str, conflict: CloudError
    ) -> compute_v1.Instance:
        """The instance called ``name`` that an insert found already there:
        ours only if it carries this create's secret (an earlier send of
        the same insert made it). Raises ``conflict`` otherwise."""
        try:
            existing = await get_instance(self._api, self._config, zone, name)
        except NotFoundError:
            raise conflict from None  # gone again: not something to return
        presented = metadata_item(existing.metadata, SECRET_TAG) or ""
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            raise conflict
        self._logger.info(
            "GCE insert of %s found its own earlier insert's instance",
            name,
            extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
        )
        return existing

    # -- instances --------------------------------------------------------

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every instance of this set carrying all of ``tags``, in every
        configured zone, in whatever state: booting, stopping and stopped
        (TERMINATED) instances still exist and may still cost money, so a
        caller must see them until they are deleted. Filters server-side on
        the derived labels, follows every ``nextPageToken``, then checks the
        exact tags and the set id from the metadata. Raises RateLimitError when throttled."""
        self._check_open()
        wanted = validate_tags(tags or {})
        flt = label_filter(self._id, wanted)
        per_zone: dict[str, list[InstanceRecord]] = {}

        async def list_one(zone: str) -> None:
            per_zone[zone] = await list_zone(self._api, self._config, self._id, zone, flt, wanted)

        with self._metrics.observe("instances"):
            try:
                async with anyio.create_task_group() as tg:
                    for zone in self._config.zones:
                        tg.start_soon(list_one, zone)
            except BaseExceptionGroup as group:
                # Raise one plain error (a rate limit first: it says when to
                # come back) rather than a group callers would have to unpack.
                errors = list(_leaves(group))
                first = next((e for e in errors if isinstance(e, RateLimitError)), errors[0])
                raise first from None
        return [GCEInstance(self, r) for zone in self._config.zones for r in per_zone[zone]]

    # -- quota groups -----------------------------------------------------

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """The machine family (``n2``, ``e2``, ``c3``, ``a2``; ``n1`` for
        custom and shared-core N1 types), with ``-spot`` for preemptible
        types: GCE counts CPUs per family and spot separately."""
        match = _FAMILY.match(itype.provider_type)
        family = match.group(1) if match else "n1"
        if family in ("f1", "g1"):
            family = "n1"
        return InstanceQuotaGroup(f"{family}-spot" if itype.preemptible else family)

    # -- per-instance calls -----------------------------------------------

    async def _set_tags(self, instance: GCEInstance, tags: InstanceTags) -> None:
        self._check_open()
        with self._metrics.observe("set_tags"):
            # The metadata and the labels take two calls: a caller cancelled
            # between them must not leave one old and the other new.
            await run_critical(
                lambda: self._tag_writer.replace(
                    instance.zone, instance.id, tags, lambda: instance._replace_user_tags(tags)
                )
            )

    async def _destroy(self, instance: GCEInstance) -> None:
        self._check_open()
        cfg = self._config
        zone, name = instance.zone, instance.id
        request = compute_v1.DeleteInstanceRequest(
            project=cfg.project, zone=zone, instance=name, request_id=str(uuid.uuid4())
        )
        with self._metrics.observe("destroy"):
            try:
                op = await self._api.call(
                    "instances.delete",
                    lambda c: c.instances.delete_unary(
                        request=request, retry=None, timeout=cfg.call_timeout
                    ),
                )
            except NotFoundError:
                return
            op = await self._operations.wait(zone, op)
            error = operation_error(op, f"delete of {name}") if op.status == DONE else None
            if error is not None and error.code not in ("RESOURCE_NOT_FOUND", "notFound"):
                raise error
        self._logger.info(
            "destroyed GCE instance %s",
            name,
            extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
        )

    async def _published_host_keys(self, instance: GCEInstance) -> list[tuple[str, str]]:
        self._check_open()
        return await published_host_keys(
            self._api, self._config, self._logger, instance.zone, instance.id
        )

    async def _stop(self) -> None:
        # Closing sessions is quick, local and must not be skipped on cancel.
        self._api.close()
