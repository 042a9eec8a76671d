"""The GCE InstanceSet and Instance."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import asyncssh
import httpx
from google.cloud import compute_v1

from cloudvm import (
    CapacityError,
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
    QuotaError,
    RateLimitError,
    SharedResourceTags,
    driver_func,
)
from cloudvm.driverkit import (
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

from ._api import Clients, ComputeAPI, NotFoundError, TransportError, load_credentials
from ._config import GCEConfig
from ._errors import ALREADY_EXISTS_CODES, classify, quota_region
from ._tags import MAX_USER_TAGS, TAGS_ITEM, decode_tags, encode_tags, label_filter, labels_for

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["DRIVER", "GCEInstance", "GCEInstanceSet"]

_DONE = compute_v1.Operation.Status.DONE
# Listed instances in these states are on their way out and are left out.
_LOCAL_SSD_BYTES = 375 * 2**30  # one GCE local SSD partition
_GIB = 2**30
# How long one zoneOperations.wait call may take: the API holds it up to 2 min.
_WAIT_CALL_TIMEOUT = 150.0  # seconds
_WAIT_RETRY_DELAY = 1.0  # seconds before asking again after a failed wait call
_SET_TAGS_ATTEMPTS = 3  # fingerprint races before set_tags gives up
_METADATA_SECRET_PATH = f"/computeMetadata/v1/instance/attributes/{SECRET_TAG}"
# One deadline for the whole read of the secret through the SSH connection.
_VERIFY_DEADLINE = 10.0  # seconds
_DERIVED_LABEL = re.compile(r"^c-[a-z0-9_-]*-[0-9a-f]{12}$")
# A machine type's family: "n2-standard-4" -> "n2"; types without a family
# prefix ("custom-4-8192", "f1-micro", "g1-small") are N1.
_FAMILY = re.compile(r"^([a-z][0-9]+[a-z]?)-")


def _last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _item(metadata: compute_v1.Metadata, key: str) -> str | None:
    for item in metadata.items:
        if item.key == key:
            return str(item.value)
    return None


def _operation_error(op: compute_v1.Operation, what: str) -> CloudError | None:
    """The cloudvm error a finished operation carries, or None if it succeeded."""
    errors = list(op.error.errors) if "error" in op else []
    if not errors:
        return None
    codes = [str(e.code) for e in errors]
    message = f"GCE {what} failed: " + "; ".join(f"{e.code}: {e.message}" for e in errors)
    status = int(op.http_error_status_code) if op.http_error_status_code else None
    wrapped = classify(codes, message, http_status=status)
    return wrapped or CloudError(message, code=codes[0])


class GCEInstance:
    """One GCE instance, as of the listing or create that produced it."""

    def __init__(
        self,
        instance_set: GCEInstanceSet,
        *,
        name: str,
        zone: str,
        machine_type: str,
        tags: InstanceTags,
        secret: str | None,
        address: str,
        created_at: datetime | None,
    ) -> None:
        self._set = instance_set
        self._name = name
        self._zone = zone
        self._machine_type = machine_type
        self._tags = dict(tags)
        self._secret = secret
        self._address = address
        self._created_at = created_at

    @property
    def id(self) -> InstanceID:
        """The instance's name; unique among this set's instances in the project."""
        return InstanceID(self._name)

    @property
    def zone(self) -> str:
        """The zone the instance runs in."""
        return self._zone

    @property
    def provider_type(self) -> str:
        """The machine type (``"n2-standard-4"``)."""
        return self._machine_type

    @property
    def tags(self) -> InstanceTags:
        """A copy of the user's tags, exactly as given (no ``cloudvm-`` tags)."""
        return dict(self._tags)

    @property
    def address(self) -> str:
        """The internal IP (or external, per the config's ``address``); ""
        while GCE has not assigned it."""
        return self._address

    @property
    def remote_user(self) -> str:
        """The config's ``admin_username``, which the SSH key is authorised for."""
        return self._set._config.admin_username

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
        checked = validate_tags(tags)
        if len(checked) > MAX_USER_TAGS:
            raise ValueError(f"tags: GCE allows at most {MAX_USER_TAGS} tags per instance")
        await self._set._set_tags(self, checked)

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
        (``_VERIFY_DEADLINE``, 10 s). Text the host chose reaches errors
        only escaped (:func:`cloudvm.driverkit.printable`).

        Returns None when the key is proven. Raises HostKeyError when the
        secret is missing or empty, the key or the secret is wrong, or the
        secret cannot be read in time; NotImplementedError when no key is
        published and ``conn`` is None.
        """
        if not self._secret:
            raise HostKeyError(
                f"{self}: the instance has no secret to prove its host key with "
                "(not created by this driver?)"
            )
        published = await self._set._published_host_keys(self)
        algorithm = key.algorithm.decode("ascii")
        blob = base64.b64encode(key.public_data).decode("ascii")
        candidates = [b for a, b in published if a == algorithm]
        if candidates:
            if any(hmac.compare_digest(b.encode(), blob.encode()) for b in candidates):
                return
            raise HostKeyError(f"{self}: the host key is not the one the instance published")
        if conn is None:
            raise NotImplementedError(
                f"{self}: no host key published yet and no connection to read the secret through"
            )
        try:
            # The client's deadline bounds its requests, answers read to their
            # end; the scope also bounds opening and closing it: one deadline.
            with anyio.fail_after(_VERIFY_DEADLINE):
                async with metadata_client(conn, timeout=_VERIFY_DEADLINE) as client:
                    response = await client.get(
                        _METADATA_SECRET_PATH, headers={"Metadata-Flavor": "Google"}
                    )
        except TimeoutError:
            raise HostKeyError(
                f"{self}: the metadata server did not answer within {_VERIFY_DEADLINE:g} s"
            ) from None
        except httpx.HTTPError as exc:
            # The reason may be text the unproven server chose: escape it.
            reason = printable(str(exc), limit=120)
            raise HostKeyError(
                f"{self}: cannot read the metadata server ({type(exc).__name__}: {reason})"
            ) from None
        if response.status_code != 200 or response.headers.get("metadata-flavor") != "Google":
            raise HostKeyError(
                f"{self}: the metadata server answered {response.status_code}, not the secret"
            )
        check_secret(response.content, self._secret)

    def __str__(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<GCEInstance {self._zone}/{self._name} address={self._address!r}>"


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
        self._next_zone = 0

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
        if not isinstance(itype, InstanceType):
            raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
        if not isinstance(image_id, str) or not image_id:
            raise ValueError("image_id must be a non-empty image URL or family URL")
        checked_tags = validate_tags(tags)
        if len(checked_tags) > MAX_USER_TAGS:
            raise ValueError(f"tags: GCE allows at most {MAX_USER_TAGS} tags per instance")
        checked_init = validate_init_command(init_command)
        if public_key is not None and not isinstance(public_key, asyncssh.SSHKey):
            raise TypeError(
                f"public_key must be an asyncssh.SSHKey or None, not {type(public_key).__name__}"
            )
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
                body = self._instance_body(
                    name, zone, itype, image_id, checked_tags, checked_init, public_key, secret
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
                self._logger.info(
                    "created GCE instance %s in %s",
                    name,
                    zone,
                    extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
                )
                address = self._address_of(found) if found is not None else ""
                created = _created_at(found) if found is not None else None
                return GCEInstance(
                    self,
                    name=name,
                    zone=zone,
                    machine_type=itype.provider_type,
                    tags=checked_tags,
                    secret=secret,
                    address=address,
                    created_at=created,
                )
            # Every zone failed: capacity may come back later, quota only
            # when something is destroyed.
            error = last_capacity or last_quota
            assert error is not None
            raise error

    def _instance_body(
        self,
        name: str,
        zone: str,
        itype: InstanceType,
        image_id: str,
        tags: InstanceTags,
        init_command: str,
        public_key: asyncssh.SSHKey | None,
        secret: str,
    ) -> compute_v1.Instance:
        cfg = self._config
        items = {
            SET_ID_TAG: self._id,
            SECRET_TAG: secret,
            TAGS_ITEM: encode_tags(tags),
            "startup-script": f"#!/bin/sh\n{init_command}\n" if init_command else "",
            "enable-guest-attributes": "TRUE",
        }
        if public_key is not None:
            line = public_key.export_public_key("openssh").decode("ascii").split()
            items["ssh-keys"] = f"{cfg.admin_username}:{line[0]} {line[1]} {cfg.admin_username}"
        disks = [
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=image_id,
                    disk_size_gb=cfg.boot_disk_size_gb,
                    disk_type=f"zones/{zone}/diskTypes/{cfg.boot_disk_type}",
                ),
            )
        ]
        if itype.added_scratch > 0:
            if cfg.scratch_disk == "local-ssd":
                for _ in range(math.ceil(itype.added_scratch / _LOCAL_SSD_BYTES)):
                    disks.append(
                        compute_v1.AttachedDisk(
                            type_="SCRATCH",
                            interface="NVME",
                            auto_delete=True,
                            initialize_params=compute_v1.AttachedDiskInitializeParams(
                                disk_type=f"zones/{zone}/diskTypes/local-ssd"
                            ),
                        )
                    )
            else:
                disks.append(
                    compute_v1.AttachedDisk(
                        auto_delete=True,
                        initialize_params=compute_v1.AttachedDiskInitializeParams(
                            disk_size_gb=math.ceil(itype.added_scratch / _GIB),
                            disk_type=f"zones/{zone}/diskTypes/{cfg.scratch_disk_type}",
                        ),
                    )
                )
        nic = compute_v1.NetworkInterface()
        if cfg.network:
            nic.network = cfg.network
        if cfg.subnetwork:
            nic.subnetwork = cfg.subnetwork
        if cfg.external_ip:
            nic.access_configs = [
                compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
            ]
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{itype.provider_type}",
            labels=labels_for(self._id, tags),
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]
            ),
            disks=disks,
            network_interfaces=[nic],
        )
        if itype.preemptible:
            body.scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                automatic_restart=False,
                on_host_maintenance="TERMINATE",
            )
        if cfg.service_account:
            body.service_accounts = [
                compute_v1.ServiceAccount(email=cfg.service_account, scopes=list(cfg.scopes))
            ]
        if cfg.network_tags:
            body.tags = compute_v1.Tags(items=list(cfg.network_tags))
        return body

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
        op = await self._wait(zone, op)
        if op.status == _DONE:
            error = _operation_error(op, f"insert of {body.name} in {zone}")
            if error is not None and error.code in ALREADY_EXISTS_CODES:
                # A resent insert can also learn of the first one this way:
                # accepted, then its operation finds the name taken.
                return await self._adopt(zone, body.name, secret, error)
            if error is not None:
                raise error
        try:
            return await self._get(zone, body.name)
        except CloudError:
            return None  # created; a later listing shows its address

    async def _adopt(
        self, zone: str, name: str, secret: str, conflict: CloudError
    ) -> compute_v1.Instance:
        """The instance called ``name`` that an insert found already there:
        ours only if it carries this create's secret (an earlier send of
        the same insert made it). Raises ``conflict`` otherwise."""
        try:
            existing = await self._get(zone, name)
        except NotFoundError:
            raise conflict from None  # gone again: not something to return
        presented = _item(existing.metadata, SECRET_TAG) or ""
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            raise conflict
        self._logger.info(
            "GCE insert of %s found its own earlier insert's instance",
            name,
            extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
        )
        return existing

    async def _wait(self, zone: str, op: compute_v1.Operation) -> compute_v1.Operation:
        """Wait with our own ZoneOperationsClient until ``op`` is DONE or
        ``operation_timeout`` passes; return its last state. (An extended
        operation's ``result()`` would poll Google's host, not ours.)"""
        cfg = self._config
        deadline = anyio.current_time() + cfg.operation_timeout
        name = op.name
        while op.status != _DONE:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                self._logger.warning(
                    "GCE operation %s is not done after %s s",
                    name,
                    cfg.operation_timeout,
                    extra={"operation": name, "zone": zone},
                )
                return op
            timeout = min(remaining, _WAIT_CALL_TIMEOUT)

            def wait(c: Clients, timeout: float = timeout) -> compute_v1.Operation:
                return c.operations.wait(
                    project=cfg.project, zone=zone, operation=name, retry=None, timeout=timeout
                )

            try:
                op = await self._api.call("zoneOperations.wait", wait)
            except TransportError:
                # The wait call itself timed out or was cut: ask again, without
                # hammering an API that refuses connections.
                await anyio.sleep(min(_WAIT_RETRY_DELAY, max(0.0, remaining)))
        return op

    async def _get(self, zone: str, name: str) -> compute_v1.Instance:
        cfg = self._config
        return await self._api.call(
            "instances.get",
            lambda c: c.instances.get(
                project=cfg.project, zone=zone, instance=name, retry=None, timeout=cfg.call_timeout
            ),
        )

    def _address_of(self, instance: compute_v1.Instance) -> str:
        if not instance.network_interfaces:
            return ""
        nic = instance.network_interfaces[0]
        if self._config.address == "external":
            return str(nic.access_configs[0].nat_i_p) if nic.access_configs else ""
        return str(nic.network_i_p)

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
        found: list[Instance] = []
        with self._metrics.observe("instances"):
            try:
                async with anyio.create_task_group() as tg:
                    for zone in self._config.zones:
                        tg.start_soon(self._list_zone, zone, flt, wanted, found)
            except BaseExceptionGroup as group:
                # Raise one plain error (a rate limit first: it says when to
                # come back) rather than a group callers would have to unpack.
                errors = list(_leaves(group))
                first = next((e for e in errors if isinstance(e, RateLimitError)), errors[0])
                raise first from None
        return found

    async def _list_zone(
        self, zone: str, flt: str, wanted: InstanceTags, found: list[Instance]
    ) -> None:
        cfg = self._config
        token = ""
        while True:
            request = compute_v1.ListInstancesRequest(
                project=cfg.project, zone=zone, filter=flt, max_results=cfg.list_page_size
            )
            if token:
                request.page_token = token

            def first_page(c: Clients, request: compute_v1.ListInstancesRequest = request) -> Any:
                pager = c.instances.list(request=request, retry=None, timeout=cfg.call_timeout)
                return next(iter(pager.pages))

            page = await self._api.call("instances.list", first_page)
            for raw in page.items:
                instance = self._from_listing(zone, raw, wanted)
                if instance is not None:
                    found.append(instance)
            token = str(page.next_page_token or "")
            if not token:
                return

    def _from_listing(
        self, zone: str, raw: compute_v1.Instance, wanted: InstanceTags
    ) -> GCEInstance | None:
        if _item(raw.metadata, SET_ID_TAG) != self._id:
            return None
        itags = decode_tags(_item(raw.metadata, TAGS_ITEM))
        if itags is None or any(itags.get(k) != v for k, v in wanted.items()):
            return None
        return GCEInstance(
            self,
            name=str(raw.name),
            zone=zone,
            machine_type=_last_segment(str(raw.machine_type)),
            tags=itags,
            secret=_item(raw.metadata, SECRET_TAG),
            address=self._address_of(raw),
            created_at=_created_at(raw),
        )

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
            await run_critical(lambda: self._replace_tags(instance, tags))

    async def _replace_tags(self, instance: GCEInstance, tags: InstanceTags) -> None:
        """Write ``tags`` to the metadata item, then the derived labels; after
        an error once the metadata may have been written, put the old item
        back so that the metadata and the labels agree (see
        :meth:`_reconcile_tags`)."""
        zone, name = instance.zone, instance.id
        original: str | None = None
        written = False
        for attempt in range(1, _SET_TAGS_ATTEMPTS + 1):
            try:
                current = await self._get(zone, name)
                if _item(current.metadata, SET_ID_TAG) != self._id:
                    raise CloudError(f"GCE instance {name} does not belong to this InstanceSet")
                if not written:
                    original = _item(current.metadata, TAGS_ITEM)
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
                if written and await self._reconcile_tags(zone, name, tags, original):
                    instance._tags = dict(tags)
                raise
            instance._tags = dict(tags)
            return

    async def _reconcile_tags(
        self, zone: str, name: str, tags: InstanceTags, original: str | None
    ) -> bool:
        """After a failed label write: unless the labels are ``tags``' after
        all (a call whose answer was lost), put the metadata item back to
        ``original`` so that it agrees with the labels, which stayed old.
        Returns True when the instance is left with ``tags``."""
        try:
            current = await self._get(zone, name)
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
        await self._finish(zone, op, f"setMetadata of {name}")

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
        await self._finish(zone, op, f"setLabels of {name}")

    async def _finish(self, zone: str, op: compute_v1.Operation, what: str) -> None:
        op = await self._wait(zone, op)
        if op.status == _DONE:
            error = _operation_error(op, what)
            if error is not None:
                raise error

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
            op = await self._wait(zone, op)
            error = _operation_error(op, f"delete of {name}") if op.status == _DONE else None
            if error is not None and error.code not in ("RESOURCE_NOT_FOUND", "notFound"):
                raise error
        self._logger.info(
            "destroyed GCE instance %s",
            name,
            extra={"instance_id": name, "zone": zone, "instance_set_id": self._id},
        )

    async def _published_host_keys(self, instance: GCEInstance) -> list[tuple[str, str]]:
        """The host keys the guest agent published, as (algorithm, base64
        blob); empty when none are (yet) or the API cannot tell."""
        self._check_open()
        cfg = self._config
        try:
            attrs = await self._api.call(
                "instances.getGuestAttributes",
                lambda c: c.instances.get_guest_attributes(
                    request=compute_v1.GetGuestAttributesInstanceRequest(
                        project=cfg.project,
                        zone=instance.zone,
                        instance=instance.id,
                        query_path="hostkeys/",
                    ),
                    retry=None,
                    timeout=cfg.call_timeout,
                ),
            )
        except CloudError as exc:
            self._logger.debug(
                "no guest attributes for %s (%s); verifying through metadata",
                instance.id,
                exc.code,
                extra={"instance_id": instance.id},
            )
            return []
        keys = []
        for entry in attrs.query_value.items:
            parts = str(entry.value).split()
            if len(parts) >= 2:
                keys.append((parts[0], parts[1]))
            elif parts:
                keys.append((str(entry.key), parts[0]))
        return keys

    async def _stop(self) -> None:
        # Closing sessions is quick, local and must not be skipped on cancel.
        self._api.close()


def _region_of(zone: str) -> str:
    # "us-central1-a" -> "us-central1"
    return zone.rsplit("-", 1)[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _created_at(instance: compute_v1.Instance) -> datetime | None:
    try:
        return datetime.fromisoformat(str(instance.creation_timestamp))
    except ValueError:
        return None


async def _new_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
) -> GCEInstanceSet:
    parsed = parse_config(GCEConfig, config, driver="gce")
    if not isinstance(id, str) or not id:
        raise ValueError("the InstanceSetID must be a non-empty string")
    validate_tags(tags, field="shared resource tags")
    credentials = await anyio.to_thread.run_sync(load_credentials, parsed)
    api = ComputeAPI(parsed, credentials)
    return GCEInstanceSet(parsed, id, logger, CallMetrics(registry, "gce"), api)


#: The GCE driver; ``cloudvm.load_driver("gce")`` returns it.
DRIVER = driver_func(_new_instance_set)
