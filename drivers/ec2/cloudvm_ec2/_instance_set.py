"""The EC2 InstanceSet: creating instances (key pair, subnets in turn),
listing them, and the calls its instances make through it."""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncssh

from cloudvm import (
    CloudError,
    ImageID,
    InitCommand,
    Instance,
    InstanceID,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from cloudvm.driverkit import (
    SECRET_TAG,
    SET_ID_TAG,
    InstanceSetBase,
    check_create_arguments,
    new_secret,
    run_critical,
    validate_tags,
)

from ._calls import GONE_CODES, EC2Calls, EC2Client, error_detail
from ._config import EC2Config
from ._errors import CallKind, EC2APIError, is_capacity_error, is_subnet_specific
from ._instance import EC2Instance
from ._keys import aws_fingerprints, key_pair_name, public_key_material
from ._launch import run_instances, run_instances_params
from ._metrics import EC2Metrics
from ._prices import SpotPriceCache
from ._quota import QUOTA_GROUPS, quota_group
from ._tag_replacement import TagReplacer
from ._tags import check_ec2_tags, escape_filter_value, tag_list

__all__ = ["EC2InstanceSet"]

# Terminated instances stay visible for a while but are gone for good;
# shutting-down ones still exist, and the contract lists them.
_GONE_STATES = frozenset({"terminated"})


class EC2InstanceSet(InstanceSetBase):
    """The EC2 InstanceSet; see the ``ec2`` driver for the config.

    It owns one EC2 client for its whole life (closed by :meth:`stop`) and
    keeps, per kind of call (create, list, other), the throttling backoff that
    EC2's missing Retry-After makes necessary (see :class:`EC2Calls`).
    """

    def __init__(
        self,
        config: EC2Config,
        set_id: InstanceSetID,
        shared_tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        metrics: EC2Metrics,
        client: EC2Client,
        exit_stack: contextlib.AsyncExitStack | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``client`` is used for every call; ``exit_stack``, when given, is
        closed by :meth:`stop` (it holds the client the driver built).
        ``clock`` times spot-price refreshes (seconds)."""
        super().__init__()
        self._config = config
        self._id = set_id
        self._shared_tags = dict(shared_tags)
        self._logger = logger
        self._metrics = metrics
        self._calls = EC2Calls(client, metrics.calls)
        self._exit_stack = exit_stack
        self._clock = clock
        self._tag_replacer = TagReplacer(self._calls, logger, set_id, config.set_tags_timeout)
        self._key_names: dict[str, str] = {}  # AWS fingerprint -> key pair name
        self._keys_lock = anyio.Lock()
        # Where the next create starts: the subnet the last one ended on.
        self._subnet_index = 0
        self._quota_groups = {**QUOTA_GROUPS, **config.quota_groups}
        self._spot_prices = SpotPriceCache(config.spot_price_update_interval)
        self._prices_lock = anyio.Lock()

    # -- the InstanceSet contract -------------------------------------------

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Launch one instance with RunInstances and return it (pending).

        In order: the public key's key pair is found by its AWS fingerprint or
        imported once (no key-pair calls without a key); then RunInstances
        runs in each configured subnet at most once, starting with the subnet
        the previous create ended on, moving on only after a subnet-specific
        error. Each subnet's attempt has its own ClientToken derived from a
        nonce of this call, and an attempt whose response is lost is repeated
        with the same token (``lost_response_retries`` times), so EC2 never
        starts a second instance for it.

        The instance is tagged at launch with ``tags``, the set's id and its
        secret, so a create that is cancelled or loses its response still
        leaves an instance that :meth:`instances` finds.

        Raises:
            ValueError / TypeError: invalid input, before any call.
            RateLimitError: EC2 throttled the call (``earliest_retry`` grows
                with consecutive throttles: 1, 2.5, 4.75, ... up to 60 s).
            QuotaError: an account limit was reached.
            CapacityError: no capacity for this type or quota group now.
                When every subnet failed, the last capacity error if any,
                else the last error, is raised.
            EC2APIError: any other EC2 error, or no answer at all.
        """
        self._check_open()
        args = check_create_arguments(
            itype, image_id, tags, init_command, public_key, image_id_is="an AMI id"
        )
        self._checked_tags(args.tags, field="tags")
        if public_key is not None:
            aws_fingerprints(public_key)  # ValueError for a type EC2 cannot import

        secret = new_secret()
        all_tags = {**args.tags, SET_ID_TAG: self._id, SECRET_TAG: secret}
        key_name = None if public_key is None else await self._key_pair(public_key)
        params = run_instances_params(
            self._config, itype, image_id, all_tags, args.init_command, secret, key_name
        )

        subnets: list[str] = self._config.subnet_ids or [""]
        nonce = secrets.token_hex(16)
        start = self._subnet_index
        last_error: CloudError | None = None
        last_was_capacity = False
        for offset in range(len(subnets)):
            index = (start + offset) % len(subnets)
            subnet = subnets[index]
            # Even after a failure the next create starts here, so that
            # successive creates do not keep hiding the other subnets' errors.
            self._subnet_index = index
            attempt = dict(params, ClientToken=f"cloudvm-{nonce}-{index}")
            if subnet:
                attempt["NetworkInterfaces"] = [
                    dict(params["NetworkInterfaces"][0], SubnetId=subnet)
                ]
            try:
                reservation = await run_instances(
                    self._calls,
                    attempt,
                    retries=self._config.lost_response_retries,
                    logger=self._logger,
                    set_id=self._id,
                )
            except CloudError as exc:
                self._metrics.instance_start(subnet, False)
                code, message = error_detail(exc)
                if not is_subnet_specific(code, message):
                    raise  # throttling, quota, a bad AMI...: no other subnet helps
                capacity = is_capacity_error(code, message)
                if last_error is None or capacity or not last_was_capacity:
                    last_error, last_was_capacity = exc, capacity
                if offset < len(subnets) - 1:
                    self._logger.warning(
                        "RunInstances failed in subnet %s (%s); trying the next subnet",
                        subnet,
                        code,
                        extra={"instance_set_id": self._id, "subnet_id": subnet, "code": code},
                    )
                continue
            self._metrics.instance_start(subnet, True)
            data = reservation["Instances"][0]
            self._logger.info(
                "created EC2 instance %s",
                data["InstanceId"],
                extra={
                    "instance_id": data["InstanceId"],
                    "instance_set_id": self._id,
                    "subnet_id": subnet,
                    "instance_type": itype.provider_type,
                },
            )
            return EC2Instance(self, data, all_tags)
        assert last_error is not None
        raise last_error

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every instance of this set carrying all of ``tags``, found with
        server-side ``tag:`` filters over every page of DescribeInstances (a
        missing or empty NextToken ends it). Instances shutting down are
        included (they exist until EC2 is done with them); terminated ones are
        left out: on EC2 they are gone for good. When spot
        instances are listed and their prices are older than
        ``spot_price_update_interval``, their price history is refreshed.

        Raises RateLimitError when throttled (with the listing's own backoff)
        and EC2APIError for other failures.
        """
        self._check_open()
        wanted = validate_tags(tags or {})
        filters = [{"Name": f"tag:{SET_ID_TAG}", "Values": [escape_filter_value(self._id)]}]
        filters += [
            {"Name": f"tag:{k}", "Values": [escape_filter_value(v)]} for k, v in wanted.items()
        ]
        found: list[EC2Instance] = []
        async for page in self._calls.pages(
            "DescribeInstances",
            CallKind.LIST,
            self._calls.client.describe_instances,
            Filters=filters,
            MaxResults=self._config.page_size,
        ):
            for reservation in page.get("Reservations", []):
                for data in reservation.get("Instances", []):
                    if data.get("State", {}).get("Name") in _GONE_STATES:
                        continue
                    instance = EC2Instance(self, data)
                    # The filter already did this; a wildcard-happy endpoint
                    # must not hand us someone else's instance.
                    if instance._all_tags.get(SET_ID_TAG) != self._id or any(
                        instance._all_tags.get(k) != v for k, v in wanted.items()
                    ):
                        continue
                    found.append(instance)
        if not wanted:
            self._metrics.instances_per_subnet(collections.Counter(i.subnet_id for i in found))
        await self._refresh_spot_prices(found)
        return list(found)

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """The vCPU quota ``itype`` draws from: its family looked up in the
        quota-group table (``m5.large`` -> ``standard``, ``vt1`` -> ``g``,
        ``p5`` -> ``p5``), with ``-spot`` for preemptible types."""
        return quota_group(itype.provider_type, itype.preemptible, self._quota_groups)

    async def _stop(self) -> None:
        if self._exit_stack is not None:
            # A cancelled stop must still close the HTTP session.
            await run_critical(self._exit_stack.aclose)

    async def _key_pair(self, public_key: asyncssh.SSHKey) -> str:
        """The name of an EC2 key pair holding ``public_key``: one found by
        its AWS fingerprint, else one imported now (once per set; concurrent
        creates wait for the one lookup)."""
        fingerprints = aws_fingerprints(public_key)
        async with self._keys_lock:
            known = self._key_names.get(fingerprints[0])
            if known is not None:
                return known
            found = await self._calls.call(
                "DescribeKeyPairs",
                CallKind.CREATE,
                self._calls.client.describe_key_pairs,
                Filters=[{"Name": "fingerprint", "Values": fingerprints}],
            )
            if found.get("KeyPairs"):
                name = str(found["KeyPairs"][0]["KeyName"])
            else:
                name = key_pair_name(public_key)
                params: dict[str, Any] = {
                    "KeyName": name,
                    "PublicKeyMaterial": public_key_material(public_key),
                }
                if self._shared_tags:
                    params["TagSpecifications"] = [
                        {"ResourceType": "key-pair", "Tags": tag_list(self._shared_tags)}
                    ]
                try:
                    await self._calls.call(
                        "ImportKeyPair",
                        CallKind.CREATE,
                        self._calls.client.import_key_pair,
                        **params,
                    )
                except EC2APIError as exc:
                    # Another process imported the same key under the same
                    # name (derived from the key) since we looked.
                    if exc.code != "InvalidKeyPair.Duplicate":
                        raise
                self._logger.info(
                    "imported EC2 key pair %s",
                    name,
                    extra={"instance_set_id": self._id, "key_name": name},
                )
            self._key_names[fingerprints[0]] = name
            return name

    def _checked_tags(self, tags: object, *, field: str) -> InstanceTags:
        """``tags`` checked by cloudvm's rules and EC2's (ValueError naming ``field``)."""
        checked = validate_tags(tags, field=field)
        check_ec2_tags(checked, field=field, imds=self._config.secret_storage == "tag", reserved=2)
        return checked

    async def _replace_tags(self, instance_id: InstanceID, tags: InstanceTags) -> None:
        self._check_open()
        await self._tag_replacer.replace(instance_id, tags)

    async def _terminate(self, instance_id: InstanceID) -> None:
        self._check_open()
        try:
            await self._calls.call(
                "TerminateInstances",
                CallKind.OTHER,
                self._calls.client.terminate_instances,
                InstanceIds=[instance_id],
            )
        except EC2APIError as exc:
            if exc.code not in GONE_CODES:
                raise
        self._logger.info(
            "terminated EC2 instance %s",
            instance_id,
            extra={"instance_id": instance_id, "instance_set_id": self._id},
        )

    async def _refresh_spot_prices(self, instances: list[EC2Instance]) -> None:
        """Refresh the spot price history of the listed spot instances' types
        when it is older than the update interval. Failures are logged, not
        raised: a listing must not fail for want of prices."""
        wanted = {(i.provider_type, i.availability_zone) for i in instances if i.preemptible}
        if not wanted:
            return
        async with self._prices_lock:
            now = self._clock()
            types = self._spot_prices.stale_types(wanted, now)
            if not types:
                return
            interval = self._spot_prices.update_interval
            entries: list[Mapping[str, Any]] = []
            try:
                async for page in self._calls.pages(
                    "DescribeSpotPriceHistory",
                    CallKind.LIST,
                    self._calls.client.describe_spot_price_history,
                    StartTime=datetime.fromtimestamp(time.time() - 3 * interval, UTC),
                    Filters=[
                        {"Name": "instance-type", "Values": types},
                        {"Name": "product-description", "Values": ["Linux/UNIX"]},
                    ],
                ):
                    entries.extend(page.get("SpotPriceHistory", []))
            except CloudError as exc:
                self._logger.warning(
                    "cannot refresh spot prices: %s", exc, extra={"instance_set_id": self._id}
                )
                return
            self._spot_prices.record(entries, wanted, now)
