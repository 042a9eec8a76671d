"""Proving a host key is an instance's: the guest agent's published keys
(read through the Compute API), else the instance's secret read from its
metadata server through the SSH connection."""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
from google.cloud import compute_v1

from cloudvm import CloudError, HostKeyError
from cloudvm.driverkit import SECRET_TAG, check_secret, metadata_get

from ._api import ComputeAPI
from ._config import GCEConfig

__all__ = ["VERIFY_DEADLINE", "published_host_keys", "verify_host_key"]

_METADATA_SECRET_PATH = f"/computeMetadata/v1/instance/attributes/{SECRET_TAG}"
#: One deadline for the whole read of the secret through the SSH connection.
VERIFY_DEADLINE = 10.0  # seconds


async def published_host_keys(
    api: ComputeAPI,
    config: GCEConfig,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    zone: str,
    name: str,
) -> list[tuple[str, str]]:
    """The host keys the guest agent published for instance ``name``, as
    (algorithm, base64 blob); empty when none are (yet) or the API cannot tell."""
    try:
        attrs = await api.call(
            "instances.getGuestAttributes",
            lambda c: c.instances.get_guest_attributes(
                request=compute_v1.GetGuestAttributesInstanceRequest(
                    project=config.project, zone=zone, instance=name, query_path="hostkeys/"
                ),
                retry=None,
                timeout=config.call_timeout,
            ),
        )
    except CloudError as exc:
        logger.debug(
            "no guest attributes for %s (%s); verifying through metadata",
            name,
            exc.code,
            extra={"instance_id": name},
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


async def verify_host_key(
    who: str,
    secret: str | None,
    published: Callable[[], Awaitable[list[tuple[str, str]]]],
    key: asyncssh.SSHKey,
    conn: asyncssh.SSHClientConnection | None,
) -> None:
    """Prove ``key`` is the host key of instance ``who``, whose create stored
    ``secret``; ``published()`` gives the keys its guest agent published.
    See :meth:`GCEInstance.verify_host_key` for the contract."""
    if not secret:
        raise HostKeyError(
            f"{who}: the instance has no secret to prove its host key with "
            "(not created by this driver?)"
        )
    algorithm = key.algorithm.decode("ascii")
    blob = base64.b64encode(key.public_data).decode("ascii")
    candidates = [b for a, b in await published() if a == algorithm]
    if candidates:
        if any(hmac.compare_digest(b.encode(), blob.encode()) for b in candidates):
            return
        raise HostKeyError(f"{who}: the host key is not the one the instance published")
    if conn is None:
        raise NotImplementedError(
            f"{who}: no host key published yet and no connection to read the secret through"
        )
    answer = await metadata_get(
        conn,
        _METADATA_SECRET_PATH,
        [("Metadata-Flavor", "Google")],
        timeout=VERIFY_DEADLINE,
        who=who,
        service="the metadata server",
    )
    if answer.header("metadata-flavor") != "Google":
        raise HostKeyError(f"{who}: the answer is not the metadata server's (no Metadata-Flavor)")
    check_secret(answer.body, secret)
