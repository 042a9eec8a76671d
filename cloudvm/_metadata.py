"""Metadata-service protocols shared by drivers (spoken through the tunnel)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncssh
import httpx

from ._channel_http import ChannelHTTP, ChannelHTTPError
from ._errors import HostKeyError
from ._validate import SECRET_TAG, check_secret

__all__ = [
    "IMDSV2_SECRET_PATH",
    "IMDSV2_TOKEN_TTL",
    "imdsv2_get",
    "imdsv2_token",
    "verify_with_imdsv2",
]

_A = TypeVar("_A")
_B = TypeVar("_B")

IMDSV2_TOKEN_TTL = 21600  # seconds, the most EC2 allows
#: Where EC2 (with InstanceMetadataTags) and the loopback cloud serve the secret.
IMDSV2_SECRET_PATH = f"/latest/meta-data/tags/instance/{SECRET_TAG}"


async def imdsv2_token(client: httpx.AsyncClient) -> str:
    """A session token from an IMDSv2-style metadata service
    (``PUT /latest/api/token``). Raises httpx errors as :func:`imdsv2_get`."""
    response = await client.put(
        "/latest/api/token",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDSV2_TOKEN_TTL)},
    )
    response.raise_for_status()
    return _text(response)


def _text(response: httpx.Response) -> str:
    # UTF-8 whatever charset the answer claims: the service does not choose
    # the codec we run on its bytes.
    return response.content.decode("utf-8", errors="replace")


async def imdsv2_get(client: httpx.AsyncClient, path: str, *, token: str | None = None) -> str:
    """GET ``path`` from an IMDSv2-style metadata service (EC2's, or the
    loopback cloud's) with ``token``, or with a fresh one from
    :func:`imdsv2_token` when None. Returns the body as text (decoded as
    UTF-8, invalid bytes replaced).

    Raises:
        httpx.HTTPStatusError: the service answered with an error status
            (404 for a missing key, 401 for a bad token).
        httpx.HTTPError: the service could not be reached.
    """
    if token is None:
        token = await imdsv2_token(client)
    response = await client.get(path, headers={"X-aws-ec2-metadata-token": token})
    response.raise_for_status()
    return _text(response)


async def verify_with_imdsv2(
    conn: asyncssh.SSHClientConnection,
    *,
    instance_id: str,
    secret: str,
    secret_path: str = IMDSV2_SECRET_PATH,
    extract: Callable[[str], str] | None = None,
    timeout: float = 10.0,
    who: str = "the host",
) -> None:
    """Prove that the SSH server behind ``conn`` is the instance ``instance_id``:
    through the connection, ask its IMDSv2 metadata service (one token, then
    the instance id and ``secret_path``) and compare the answers with what the
    driver recorded, the secret in constant time. ``extract`` picks the secret
    out of the body (e.g. from user data); ``who`` names the instance in errors.

    ``timeout`` (seconds) bounds the whole proof, every request together,
    not each one. Answers are read as :func:`metadata_client` reads them:
    capped, never decompressed, and the host's text escaped in errors. The
    proof takes three round trips over the connection: two channels opened
    at once, the token asked on one, then both reads at once.

    Returns None when both match. Raises HostKeyError when either differs, the
    secret is empty (expected or presented), or the service cannot be read in
    time.
    """
    async with ChannelHTTP(conn, timeout=timeout) as http:
        try:
            presented_id, presented = await _imdsv2_proof(http, secret_path)
        except ChannelHTTPError as exc:
            raise HostKeyError(f"{who}: cannot read the metadata service: {exc}") from None
        except _StatusError as exc:
            raise HostKeyError(f"{who}: cannot read the metadata service: {exc}") from None
    if presented_id.strip() != instance_id:
        raise HostKeyError(f"{who}: the host is another instance")
    check_secret(extract(presented) if extract else presented, secret)


class _StatusError(Exception):
    """The service answered with an error status (the message names it,
    not the reason phrase the host chose)."""


async def _imdsv2_get(http: ChannelHTTP, method: str, path: str, header: tuple[str, str]) -> str:
    answer = await http.request(method, path, [header])
    if not 200 <= answer.status < 300:
        raise _StatusError(f"it answered HTTP {answer.status} to {method} {path}")
    return answer.text()


async def _imdsv2_proof(http: ChannelHTTP, secret_path: str) -> tuple[str, str]:
    """The instance id and the body at ``secret_path``, in three round trips."""
    ttl = ("X-aws-ec2-metadata-token-ttl-seconds", str(IMDSV2_TOKEN_TTL))
    # The second channel opens while the token is asked on the first.
    _, token = await _both(http.open_spare(), _imdsv2_get(http, "PUT", "/latest/api/token", ttl))
    header = ("X-aws-ec2-metadata-token", token)
    return await _both(
        _imdsv2_get(http, "GET", "/latest/meta-data/instance-id", header),
        _imdsv2_get(http, "GET", secret_path, header),
    )


async def _both(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    """Await both at once; the first failure is raised as itself (the other
    is cancelled), not inside an exception group."""
    done: list[Any] = [None]

    async def run_first() -> None:
        done[0] = await first

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run_first)
            later = await second
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return done[0], later
