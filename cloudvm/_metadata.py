"""Metadata-service protocols shared by drivers (spoken through the tunnel)."""

from __future__ import annotations

import httpx

__all__ = ["IMDSV2_TOKEN_TTL", "imdsv2_get"]

IMDSV2_TOKEN_TTL = 21600  # seconds, the most EC2 allows


async def imdsv2_get(client: httpx.AsyncClient, path: str) -> str:
    """GET ``path`` from an IMDSv2-style metadata service (EC2's, or the
    loopback cloud's): first PUT ``/latest/api/token`` for a session token, then
    GET with that token. Returns the body as text.

    Raises:
        httpx.HTTPStatusError: the service answered with an error status
            (404 for a missing key).
        httpx.HTTPError: the service could not be reached.
    """
    token = await client.put(
        "/latest/api/token",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDSV2_TOKEN_TTL)},
    )
    token.raise_for_status()
    response = await client.get(path, headers={"X-aws-ec2-metadata-token": token.text})
    response.raise_for_status()
    return response.text
