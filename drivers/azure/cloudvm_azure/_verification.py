"""Proving a host through Azure IMDS, over the host's own SSH connection."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import asyncssh
import httpx

from cloudvm import HostKeyError
from cloudvm.driverkit import SECRET_TAG, check_secret, metadata_client, printable

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
    decompressed (:func:`cloudvm.driverkit.metadata_client`), and text the
    host chose reaches errors only escaped (:func:`cloudvm.driverkit.printable`).

    Returns None when the secrets match; raises HostKeyError (its message
    starting with ``who``) when the host's answer is missing, late,
    malformed or holds another secret.
    """
    deadline = IMDS_TIMEOUT
    try:
        # The client's deadline bounds its requests, answers read to their
        # end; the scope also bounds opening and closing it: one deadline.
        with anyio.fail_after(deadline):
            async with metadata_client(conn, timeout=deadline) as client:
                response = await client.get(
                    "/metadata/instance",
                    params={"api-version": IMDS_API_VERSION},
                    headers={"Metadata": "true"},
                )
    except (TimeoutError, httpx.TimeoutException):
        raise HostKeyError(f"{who}: Azure IMDS did not answer within {deadline:g} s") from None
    except (httpx.HTTPError, OSError, asyncssh.Error) as exc:
        # The reason may be text the unproven host chose: escape it.
        reason = printable(str(exc), limit=120)
        raise HostKeyError(
            f"{who}: cannot read Azure IMDS ({type(exc).__name__}: {reason})"
        ) from None
    if response.status_code != 200:
        raise HostKeyError(f"{who}: Azure IMDS answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
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
