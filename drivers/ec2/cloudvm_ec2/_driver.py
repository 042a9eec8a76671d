"""The EC2 InstanceSet and Instance, on aiobotocore."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread
import asyncssh
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

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
    RateLimitError,
    SharedResourceTags,
    driver_func,
)
from cloudvm.driverkit import (
    IMDSV2_SECRET_PATH,
    RESERVED_TAG_PREFIX,
    SECRET_TAG,
    SET_ID_TAG,
    InstanceSetBase,
    new_secret,
    parse_config,
    run_critical,
    validate_init_command,
    validate_tags,
    verify_with_imdsv2,
)

from ._config import EC2Config
from ._errors import (
    Backoff,
    CallKind,
    EC2APIError,
    classify,
    is_capacity_error,
    is_subnet_specific,
)
from ._keys import aws_fingerprints, key_pair_name, public_key_material
from ._metrics import EC2Metrics
from ._prices import SpotPriceCache, normalize_prices, scratch_price_per_hour
from ._quota import QUOTA_GROUPS, quota_group
from ._redact import install_redaction
from ._tags import TagChange, plan_tag_change

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["DRIVER", "SECRET_USER_DATA_PREFIX", "EC2Client", "EC2Instance", "EC2InstanceSet"]

#: In ``secret_storage="user-data"`` mode, the user-data line carrying the secret.
SECRET_USER_DATA_PREFIX = f"# {SECRET_TAG}: "
_MAX_TAGS = 50  # per EC2 resource
# Instance tags readable through IMDS may use only these characters in keys
# (EC2 refuses to launch or tag otherwise when InstanceMetadataTags is on).
_IMDS_TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=.,_:@]+$")
_IMDS_FORBIDDEN_KEYS = frozenset({".", "..", "_index"})
# Terminated instances stay visible for a while but are gone for good;
# shutting-down ones still exist, and the contract lists them.
_GONE_STATES = frozenset({"terminated"})
_GONE_CODES = frozenset({"InvalidInstanceID.NotFound"})
# EC2 filter values treat these as wildcards unless escaped with a backslash.
_FILTER_SPECIALS = re.compile(r"([\\*?])")
_LOST_RESPONSE_PAUSE = 0.5  # seconds before repeating a RunInstances that got no answer

_Response = dict[str, Any]


class EC2Client(Protocol):
    """The calls the driver makes: the narrow face of an aiobotocore EC2
    client, so that tests can hand in a stub (each takes the API's keyword
    arguments and returns its parsed response)."""

    def describe_key_pairs(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def import_key_pair(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def run_instances(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def describe_instances(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def describe_spot_price_history(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def describe_tags(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def create_tags(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def delete_tags(self, **kwargs: Any) -> Awaitable[_Response]: ...
    def terminate_instances(self, **kwargs: Any) -> Awaitable[_Response]: ...


def _check_ec2_tags(tags: Mapping[str, str], *, field: str, imds: bool, reserved: int) -> None:
    """EC2's own tag rules, on top of cloudvm's (already checked)."""
    if len(tags) + reserved > _MAX_TAGS:
        raise ValueError(
            f"{field}: EC2 allows {_MAX_TAGS} tags per instance and cloudvm uses {reserved}; "
            f"{len(tags)} given"
        )
    for key in tags:
        if key.lower().startswith("aws:"):
            raise ValueError(f"{field}: key {key!r}: the 'aws:' prefix is reserved by AWS")
        if imds and (not _IMDS_TAG_KEY.match(key) or key in _IMDS_FORBIDDEN_KEYS):
            raise ValueError(
                f"{field}: key {key!r} cannot be an EC2 instance tag readable through the "
                "metadata service (letters, digits and + - = . , _ : @ only). Use other "
                'keys, or the config secret_storage="user-data"'
            )


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _escape_filter_value(value: str) -> str:
    return _FILTER_SPECIALS.sub(r"\\\1", value)


def _format_price(price: float) -> str:
    # EC2 wants a plain decimal, never an exponent ("1e-05").
    return f"{price:.6f}".rstrip("0").rstrip(".")


def _answered(exc: CloudError) -> bool:
    """False when the call got no answer (it may have been applied or not)."""
    return not (isinstance(exc, EC2APIError) and exc.code is None)


def _error_detail(exc: CloudError) -> tuple[str, str]:
    """EC2's own code and message behind a translated error."""
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        return str(error.get("Code", "")), str(error.get("Message", ""))
    return exc.code or "", exc.message


class EC2Instance:
    """One EC2 instance, as of the listing or create that produced it."""

    def __init__(
        self,
        instance_set: EC2InstanceSet,
        data: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._set = instance_set
        self._id = InstanceID(str(data["InstanceId"]))
        self._type = str(data.get("InstanceType", ""))
        self._all_tags = (
            dict(tags) if tags is not None else {t["Key"]: t["Value"] for t in data.get("Tags", [])}
        )
        self._private_ip = str(data.get("PrivateIpAddress") or "")
        self._public_ip = str(data.get("PublicIpAddress") or "")
        self._zone = str(data.get("Placement", {}).get("AvailabilityZone") or "")
        self._subnet = str(data.get("SubnetId") or "")
        self._spot = data.get("InstanceLifecycle") == "spot"
        launched = data.get("LaunchTime")
        self._launched = launched if isinstance(launched, datetime) else datetime.now(UTC)
        self._state = str(data.get("State", {}).get("Name", ""))

    @property
    def id(self) -> InstanceID:
        """EC2's instance id (``i-...``)."""
        return self._id

    @property
    def provider_type(self) -> str:
        """The EC2 instance type (``m5.large``)."""
        return self._type

    @property
    def tags(self) -> InstanceTags:
        """A copy of the user's tags (cloudvm's own ``cloudvm-*`` tags hidden)."""
        return {k: v for k, v in self._all_tags.items() if not k.startswith(RESERVED_TAG_PREFIX)}

    @property
    def address(self) -> str:
        """The private IP (or the public one, with ``address="public"``); ""
        until EC2 has assigned it."""
        return self._public_ip if self._set._config.address == "public" else self._private_ip

    @property
    def remote_user(self) -> str:
        """The config's ``admin_username``."""
        return self._set._config.admin_username

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
        await self._set._replace_tags(self._id, checked)
        self._all_tags = {
            **checked,
            **{k: v for k, v in self._all_tags.items() if k.startswith(RESERVED_TAG_PREFIX)},
        }

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """Spot instances: the spot prices of the type in the instance's zone
        as of the last listing, newest first. On-demand instances: the type's
        price since launch. Both include the added scratch volume's cost."""
        extra = scratch_price_per_hour(itype.added_scratch, self._set._config.ebs_price)
        if self._spot:
            prices = self._set._spot_prices.history(self._type, self._zone)
        else:
            prices = [InstancePrice(self._launched, itype.price)]
        return normalize_prices(InstancePrice(p.start_time, p.price + extra) for p in prices)

    async def destroy(self) -> None:
        """Terminate the instance; its scratch volume and NIC go with it.
        An instance that is already gone is not an error."""
        await self._set._terminate(self._id)

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
        config = self._set._config
        user_data_mode = config.secret_storage != "tag"
        await verify_with_imdsv2(
            conn,
            instance_id=self._id,
            secret=expected,
            secret_path="/latest/user-data" if user_data_mode else IMDSV2_SECRET_PATH,
            extract=_secret_from_user_data if user_data_mode else None,
            timeout=config.metadata_timeout,
            who=str(self),
        )

    def __str__(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return (
            f"<EC2Instance {self._id} {self._type} state={self._state!r} "
            f"address={self.address!r} tags={self.tags!r}>"
        )


def _secret_from_user_data(user_data: str) -> str:
    for line in user_data.splitlines():
        if line.startswith(SECRET_USER_DATA_PREFIX):
            return line[len(SECRET_USER_DATA_PREFIX) :]
    return ""


class EC2InstanceSet(InstanceSetBase):
    """The EC2 InstanceSet; see the ``ec2`` driver for the config.

    It owns one EC2 client for its whole life (closed by :meth:`stop`) and
    keeps, per kind of call (create, list, other), the throttling backoff that
    EC2's missing Retry-After makes necessary.
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
        self._client = client
        self._exit_stack = exit_stack
        self._clock = clock
        self._backoffs = {kind: Backoff() for kind in CallKind}
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
        if not isinstance(itype, InstanceType):
            raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
        if not isinstance(image_id, str) or not image_id:
            raise ValueError("image_id must be a non-empty string (an AMI id)")
        user_tags = self._checked_tags(tags, field="tags")
        script = validate_init_command(init_command)
        if public_key is not None:
            if not isinstance(public_key, asyncssh.SSHKey):
                kind = type(public_key).__name__
                raise TypeError(f"public_key must be an asyncssh.SSHKey or None, not {kind}")
            aws_fingerprints(public_key)  # ValueError for a type EC2 cannot import

        secret = new_secret()
        all_tags = {**user_tags, SET_ID_TAG: self._id, SECRET_TAG: secret}
        key_name = None if public_key is None else await self._key_pair(public_key)
        params = self._run_instances_params(itype, image_id, all_tags, script, secret, key_name)

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
                reservation = await self._run_instances(attempt)
            except CloudError as exc:
                self._metrics.instance_start(subnet, False)
                code, message = _error_detail(exc)
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
        filters = [{"Name": f"tag:{SET_ID_TAG}", "Values": [_escape_filter_value(self._id)]}]
        filters += [
            {"Name": f"tag:{k}", "Values": [_escape_filter_value(v)]} for k, v in wanted.items()
        ]
        found: list[EC2Instance] = []
        async for page in self._pages(
            "DescribeInstances",
            CallKind.LIST,
            self._client.describe_instances,
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

    # -- calls --------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        kind: CallKind,
        method: Callable[..., Awaitable[_Response]],
        **params: Any,
    ) -> _Response:
        """Make one API call, counted in the metrics under ``operation``, with
        EC2's errors translated once, here (chained to the botocore error)."""
        backoff = self._backoffs[kind]
        with self._metrics.calls.observe(operation):
            try:
                response = await method(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                meta = exc.response.get("ResponseMetadata", {})
                raise classify(
                    code=str(error.get("Code") or "Unknown"),
                    message=str(error.get("Message") or ""),
                    operation=operation,
                    request_id=meta.get("RequestId") or None,
                    status=meta.get("HTTPStatusCode"),
                    backoff=backoff,
                ) from exc
            except (BotoCoreError, OSError) as exc:
                backoff.reset()
                raise EC2APIError(
                    f"EC2 {operation}: no answer from the endpoint: {exc}",
                    code=None,
                    operation=operation,
                ) from exc
        backoff.reset()
        return response

    async def _pages(
        self,
        operation: str,
        kind: CallKind,
        method: Callable[..., Awaitable[_Response]],
        **params: Any,
    ) -> AsyncIterator[_Response]:
        """Every page of a paginated call. A missing or empty NextToken ends
        it: some endpoints send ``<nextToken/>`` on the last page."""
        while True:
            page = await self._call(operation, kind, method, **params)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            params["NextToken"] = token

    async def _key_pair(self, public_key: asyncssh.SSHKey) -> str:
        """The name of an EC2 key pair holding ``public_key``: one found by
        its AWS fingerprint, else one imported now (once per set; concurrent
        creates wait for the one lookup)."""
        fingerprints = aws_fingerprints(public_key)
        async with self._keys_lock:
            known = self._key_names.get(fingerprints[0])
            if known is not None:
                return known
            found = await self._call(
                "DescribeKeyPairs",
                CallKind.CREATE,
                self._client.describe_key_pairs,
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
                        {"ResourceType": "key-pair", "Tags": _tag_list(self._shared_tags)}
                    ]
                try:
                    await self._call(
                        "ImportKeyPair", CallKind.CREATE, self._client.import_key_pair, **params
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

    def _run_instances_params(
        self,
        itype: InstanceType,
        image_id: str,
        tags: Mapping[str, str],
        init_command: str,
        secret: str,
        key_name: str | None,
    ) -> dict[str, Any]:
        config = self._config
        in_tags = config.secret_storage == "tag"
        nic: dict[str, Any] = {
            "DeviceIndex": 0,
            "AssociatePublicIpAddress": config.address == "public",
            "DeleteOnTermination": True,
        }
        if config.security_group_ids:
            nic["Groups"] = list(config.security_group_ids)
        # botocore base64-encodes UserData itself.
        user_data = "#!/bin/sh\n"
        if not in_tags:
            user_data += f"{SECRET_USER_DATA_PREFIX}{secret}\n"
        user_data += f"{init_command}\n"
        volume_tags = {k: v for k, v in tags.items() if k != SECRET_TAG}
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": itype.provider_type,
            "MinCount": 1,
            "MaxCount": 1,
            "NetworkInterfaces": [nic],
            "DisableApiTermination": False,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": _tag_list(tags)},
                {"ResourceType": "volume", "Tags": _tag_list(volume_tags)},
            ],
            "UserData": user_data,
            "MetadataOptions": {
                "HttpEndpoint": "enabled",
                "HttpTokens": "required",
                "InstanceMetadataTags": "enabled" if in_tags else "disabled",
            },
        }
        if key_name is not None:
            params["KeyName"] = key_name
        if itype.added_scratch > 0:
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": config.scratch_device_name,
                    "Ebs": {
                        "DeleteOnTermination": True,
                        "VolumeSize": -(-itype.added_scratch // (1 << 30)),
                        "VolumeType": config.ebs_volume_type,
                    },
                }
            ]
        if itype.preemptible:
            spot: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if itype.price > 0:
                spot["MaxPrice"] = _format_price(itype.price)
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        if config.iam_instance_profile:
            profile = config.iam_instance_profile
            params["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
            )
        return params

    async def _run_instances(self, params: dict[str, Any]) -> _Response:
        """RunInstances, repeated with the same ClientToken when no answer
        arrived: EC2 answers a repeat with the first call's instance."""
        retries = self._config.lost_response_retries
        for attempt in range(retries + 1):
            try:
                return await self._call(
                    "RunInstances", CallKind.CREATE, self._client.run_instances, **params
                )
            except EC2APIError as exc:
                lost = isinstance(exc.__cause__, (HTTPClientError, BotoConnectionError, OSError))
                if not lost or attempt == retries:
                    raise
                self._logger.warning(
                    "RunInstances got no answer (%s); repeating it with the same ClientToken",
                    exc.__cause__,
                    extra={"instance_set_id": self._id, "attempt": attempt + 1},
                )
            await anyio.sleep(_LOST_RESPONSE_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checked_tags(self, tags: object, *, field: str) -> InstanceTags:
        checked = validate_tags(tags, field=field)
        _check_ec2_tags(checked, field=field, imds=self._config.secret_storage == "tag", reserved=2)
        return checked

    async def _replace_tags(self, instance_id: InstanceID, tags: InstanceTags) -> None:
        self._check_open()
        current: dict[str, str] = {}
        async for page in self._pages(
            "DescribeTags",
            CallKind.OTHER,
            self._client.describe_tags,
            Filters=[{"Name": "resource-id", "Values": [instance_id]}],
        ):
            current.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        if current.get(SET_ID_TAG) != self._id:
            raise CloudError(
                f"EC2 instance {instance_id} does not carry this InstanceSet's id "
                "(gone, or another set's); its tags are left alone"
            )
        old = {k: v for k, v in current.items() if not k.startswith(RESERVED_TAG_PREFIX)}
        forward, back = plan_tag_change(old, tags)
        # Once the first call is made, the second must follow (or the first
        # be undone) whoever cancels the caller.
        await run_critical(lambda: self._change_tags(instance_id, forward, back))

    async def _change_tags(
        self, instance_id: InstanceID, forward: TagChange, back: TagChange
    ) -> None:
        """Apply ``forward`` (CreateTags, then DeleteTags); if the second call
        cannot be made, or the first may have been applied without an answer,
        repeat it until ``set_tags_timeout``, then apply ``back``."""
        steps = self._tag_steps(instance_id, forward)
        if not steps:
            return
        try:
            await steps[0]()
        except CloudError as exc:
            # One call is all or nothing, and a refused call changed nothing.
            if len(steps) == 1 or _answered(exc):
                raise
        else:
            steps = steps[1:]
        timeout = self._config.set_tags_timeout
        try:
            await self._persist(steps, anyio.current_time() + timeout)
        except CloudError as exc:
            if exc.code in _GONE_CODES:
                raise
            self._logger.warning(
                "EC2 instance %s: cannot finish replacing its tags (%s); putting the old ones back",
                instance_id,
                exc,
                extra={"instance_id": instance_id, "instance_set_id": self._id},
            )
            try:
                await self._persist(
                    self._tag_steps(instance_id, back), anyio.current_time() + timeout
                )
            except CloudError as undo_exc:
                raise CloudError(
                    f"EC2 instance {instance_id} has neither its old nor its new tags: "
                    f"{exc}; putting the old ones back failed too: {undo_exc}",
                    code=exc.code,
                ) from exc
            raise

    def _tag_steps(
        self, instance_id: InstanceID, change: TagChange
    ) -> list[Callable[[], Awaitable[_Response]]]:
        steps: list[Callable[[], Awaitable[_Response]]] = []
        if change.put:
            steps.append(
                functools.partial(
                    self._call,
                    "CreateTags",
                    CallKind.OTHER,
                    self._client.create_tags,
                    Resources=[instance_id],
                    Tags=_tag_list(change.put),
                )
            )
        if change.drop:
            steps.append(
                functools.partial(
                    self._call,
                    "DeleteTags",
                    CallKind.OTHER,
                    self._client.delete_tags,
                    Resources=[instance_id],
                    Tags=[{"Key": k} for k in change.drop],
                )
            )
        return steps

    async def _persist(
        self, steps: list[Callable[[], Awaitable[_Response]]], deadline: float
    ) -> None:
        """Make each (idempotent) call in turn, repeating one that was
        throttled (after EC2's hold-off) or got no answer, as long as the
        repeat can start before ``deadline``."""
        for step in steps:
            while True:
                try:
                    await step()
                    break
                except RateLimitError as exc:
                    error: CloudError = exc
                    wait = (exc.earliest_retry - datetime.now(UTC)).total_seconds()
                except CloudError as exc:
                    if _answered(exc):
                        raise
                    error, wait = exc, _LOST_RESPONSE_PAUSE
                if anyio.current_time() + wait > deadline:
                    raise error
                await anyio.sleep(max(wait, 0.0))

    async def _terminate(self, instance_id: InstanceID) -> None:
        self._check_open()
        try:
            await self._call(
                "TerminateInstances",
                CallKind.OTHER,
                self._client.terminate_instances,
                InstanceIds=[instance_id],
            )
        except EC2APIError as exc:
            if exc.code not in _GONE_CODES:
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
                async for page in self._pages(
                    "DescribeSpotPriceHistory",
                    CallKind.LIST,
                    self._client.describe_spot_price_history,
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


async def _new_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
) -> EC2InstanceSet:
    parsed = parse_config(EC2Config, config, driver="ec2")
    if not isinstance(id, str) or not id or len(id) > 256:
        raise ValueError("the InstanceSetID must be a non-empty string of at most 256 characters")
    shared = validate_tags(tags, field="shared resource tags")
    _check_ec2_tags(shared, field="shared resource tags", imds=False, reserved=0)
    metrics = EC2Metrics(registry, id)
    stack = contextlib.AsyncExitStack()
    try:
        client = await _open_client(parsed, stack)
    except BaseException:
        await run_critical(stack.aclose)
        raise
    return EC2InstanceSet(parsed, id, shared, logger, metrics, client, stack)


async def _open_client(config: EC2Config, stack: contextlib.AsyncExitStack) -> EC2Client:
    """One aiobotocore EC2 client with SDK retries off, entered on ``stack``;
    botocore's own debug logs redacted."""
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import AioSession  # type: ignore[import-untyped]

    # Building a client reads botocore's data files (~0.15 s of JSON for
    # EC2): load them in a worker thread into the session's loader, whose
    # cache create_client then uses, so the event loop never blocks on them.
    def prepare() -> AioSession:
        session = AioSession(profile=config.profile)
        loader = session.get_component("data_loader")
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        for kind in ("service-2", "paginators-1", "endpoint-rule-set-1"):
            loader.load_service_model("ec2", kind)
        return session

    install_redaction()
    session = await anyio.to_thread.run_sync(prepare)
    aio_config = AioConfig(
        # Throttling must reach the caller as RateLimitError, not be retried
        # (and hidden for ~9 s) by botocore.
        retries={"total_max_attempts": 1},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        user_agent_extra="cloudvm-ec2",
    )
    kwargs: dict[str, Any] = {"region_name": config.region, "config": aio_config}
    if config.endpoint_url is not None:
        kwargs["endpoint_url"] = str(config.endpoint_url).rstrip("/")
    if config.access_key_id is not None and config.secret_access_key is not None:
        kwargs["aws_access_key_id"] = config.access_key_id
        kwargs["aws_secret_access_key"] = config.secret_access_key.get_secret_value()
        if config.session_token is not None:
            kwargs["aws_session_token"] = config.session_token.get_secret_value()
    client: EC2Client = await stack.enter_async_context(session.create_client("ec2", **kwargs))
    return client


#: The EC2 driver; ``cloudvm.load_driver("ec2")`` returns it.
DRIVER = driver_func(_new_instance_set)
