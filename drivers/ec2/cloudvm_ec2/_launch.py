"""Launching one instance: the RunInstances request, and its repetition with
the same ClientToken when no answer arrived."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from cloudvm import InstanceSetID, InstanceType
from cloudvm.driverkit import SECRET_TAG

from ._calls import LOST_RESPONSE_PAUSE, EC2Calls, Response, is_lost_response
from ._config import EC2Config
from ._errors import CallKind, EC2APIError
from ._tags import tag_list
from ._user_data import user_data_script

__all__ = ["run_instances", "run_instances_params"]


def _format_price(price: float) -> str:
    # EC2 wants a plain decimal, never an exponent ("1e-05").
    return f"{price:.6f}".rstrip("0").rstrip(".")


def run_instances_params(
    config: EC2Config,
    itype: InstanceType,
    image_id: str,
    tags: Mapping[str, str],
    init_command: str,
    secret: str,
    key_name: str | None,
) -> dict[str, Any]:
    """RunInstances' parameters for one instance of ``itype`` tagged with
    ``tags`` at launch (its volume too, without the secret), IMDSv2 only,
    terminated on shutdown; without ClientToken and subnet, which each
    attempt adds."""
    in_tags = config.secret_storage == "tag"
    nic: dict[str, Any] = {
        "DeviceIndex": 0,
        "AssociatePublicIpAddress": config.address == "public",
        "DeleteOnTermination": True,
    }
    if config.security_group_ids:
        nic["Groups"] = list(config.security_group_ids)
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
            {"ResourceType": "instance", "Tags": tag_list(tags)},
            {"ResourceType": "volume", "Tags": tag_list(volume_tags)},
        ],
        # botocore base64-encodes UserData itself.
        "UserData": user_data_script(init_command, None if in_tags else secret),
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


async def run_instances(
    calls: EC2Calls,
    params: dict[str, Any],
    *,
    retries: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    set_id: InstanceSetID,
) -> Response:
    """RunInstances, repeated (up to ``retries`` times) with the same
    ClientToken when no answer arrived: EC2 answers a repeat with the first
    call's instance. Raises what :meth:`EC2Calls.call` raises."""
    for attempt in range(retries + 1):
        try:
            return await calls.call(
                "RunInstances", CallKind.CREATE, calls.client.run_instances, **params
            )
        except EC2APIError as exc:
            if not is_lost_response(exc) or attempt == retries:
                raise
            logger.warning(
                "RunInstances got no answer (%s); repeating it with the same ClientToken",
                exc.__cause__,
                extra={"instance_set_id": set_id, "attempt": attempt + 1},
            )
        await anyio.sleep(LOST_RESPONSE_PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover
