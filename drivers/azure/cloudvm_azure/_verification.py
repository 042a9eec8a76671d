"""Proving a host through Azure IMDS, over the host's own SSH connection."""

from __future__ import annotations

import json
from collections.abc import Mapping

import asyncssh

from cloudvm import HostKeyError
from cloudvm.driverkit import SECRET_TAG, check_secret, metadata_get

from ._resources import field

__all__ = ["IMDS_API_VERSION", "IMDS_TIMEOUT", "presented_secret", "verify_through_imds"]

IMDS_API_VERSION = "2021-02-01"
IMDS_TIMEOUT = 30.0  # seconds for the whole metadata exchange


async def verify_through_imds(
    conn: asyncssh.SSHClientConnection, expected: str, who: object
) -> None:
    """Through ``conn`` ask 169.254.169.254 (``Metadata: true``) for the
    instance's metadata and compare the ``cloudvm-secret`` entry of its
    ``compute.tagsList`` with ``expected``, in constant time. The host is
    not proven yet: the exchange has one deadline (IMDS_TIMEOUT seconds,
    opening the channel included), the answer is bounded and never
    decompressed (:func:`cloudvm.driverkit.metadata_get`), and text the
    host chose reaches errors only escaped.

    Returns None when the secrets match; raises HostKeyError (its message
    starting with ``who``) when the host's answer is missing, late,
    malformed or holds another secret.
    """
    answer = await metadata_get(
        conn,
        f"/metadata/instance?api-version={IMDS_API_VERSION}",
        [("Metadata", "true")],
        timeout=IMDS_TIMEOUT,
        who=str(who),
        service="Azure IMDS",
    )
    try:
        document = json.loads(answer.body)
    except (ValueError, RecursionError):  # RecursionError: nesting the host chose
        raise HostKeyError(f"{who}: the answer of Azure IMDS is not JSON") from None
    check_secret(presented_secret(document, who), expected)


def presented_secret(document: object, who: object) -> str:
    """The ``cloudvm-secret`` value of an IMDS instance document's
    ``compute.tagsList``; HostKeyError when there is none."""
    tags_list = field(document, "compute", "tagsList") if isinstance(document, Mapping) else None
    presented = None
    if isinstance(tags_list, list):
        for item in tags_list:
            if isinstance(item, Mapping) and item.get("name") == SECRET_TAG:
                presented = item.get("value")
    if not isinstance(presented, str):
        raise HostKeyError(f"{who}: the host's metadata carries no instance secret")
    return presented
