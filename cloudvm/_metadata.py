"""Metadata-service protocols shared by drivers (spoken through the tunnel)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import asyncssh
import httpx

from ._channel_http import ChannelAnswer, ChannelHTTP, ChannelHTTPError, ChannelHTTPTimeout
from ._errors import HostKeyError
from ._validate import SECRET_TAG, check_secret

__all__ = [
    "IMDSV2_SECRET_PATH",
    "IMDSV2_TOKEN_TTL",
    "imdsv2_get",
    "imdsv2_token",
    "metadata_get",
    "verify_with_imdsv2",
]

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
    proof takes three round trips over the connection, on one channel: its
    open, the token, then both reads pipelined.

    Returns None when both match. Raises HostKeyError when either differs, the
    secret is empty (expected or presented), or the service cannot be read in
    time.
    """
    async with ChannelHTTP(conn, timeout=timeout) as http:
        try:
            presented_id, presented = await _imdsv2_proof(http, secret_path)
        except (ChannelHTTPError, _StatusError) as exc:
            raise HostKeyError(f"{who}: cannot read the metadata service: {exc}") from None
    if presented_id.strip() != instance_id:
        raise HostKeyError(f"{who}: the host is another instance")
    check_secret(extract(presented) if extract else presented, secret)


async def metadata_get(
    conn: asyncssh.SSHClientConnection,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    host: str = "169.254.169.254",
    timeout: float = 10.0,
    who: str = "the host",
    service: str = "the metadata service",
) -> ChannelAnswer:
    """GET ``path`` with ``headers`` from the metadata service at ``host``
    (port 80) as the SSH server behind ``conn`` reaches it: the one question
    a proof by metadata asks (GCE's and Azure's, for instance), in two round
    trips (the channel's open, then the request).

    ``timeout`` (seconds) bounds the whole exchange, the channel's open
    included. The answer is read as :class:`ChannelHTTP` reads it: capped,
    sent for with ``Accept-Encoding: identity`` and never decompressed.

    Returns the answer when its status is 200. Raises HostKeyError naming
    ``who`` and ``service`` when the service cannot be reached or read in
    time, breaks HTTP or a cap, or answers any other status; the text the
    host chose reaches the message only escaped.
    """
    try:
        async with ChannelHTTP(conn, host=host, timeout=timeout) as http:
            answer = await http.request("GET", path, headers)
    except ChannelHTTPTimeout:
        raise HostKeyError(f"{who}: {service} did not answer within {timeout:g} s") from None
    except ChannelHTTPError as exc:
        raise HostKeyError(f"{who}: cannot read {service}: {exc}") from None
    if answer.status != 200:
        raise HostKeyError(f"{who}: {service} answered HTTP {answer.status}")
    return answer


class _StatusError(Exception):
    """The service answered with an error status (the message names it,
    not the reason phrase the host chose)."""


def _answer_text(answer: ChannelAnswer, method: str, path: str) -> str:
    if not 200 <= answer.status < 300:
        raise _StatusError(f"it answered HTTP {answer.status} to {method} {path}")
    return answer.text()


async def _imdsv2_proof(http: ChannelHTTP, secret_path: str) -> tuple[str, str]:
    """The instance id and the body at ``secret_path``, in three round trips
    on one channel: its open, the token, then both reads pipelined."""
    token_path = "/latest/api/token"
    ttl = ("X-aws-ec2-metadata-token-ttl-seconds", str(IMDSV2_TOKEN_TTL))
    token = _answer_text(await http.request("PUT", token_path, [ttl]), "PUT", token_path)
    paths = ["/latest/meta-data/instance-id", secret_path]
    answers = await http.get_all(paths, [("X-aws-ec2-metadata-token", token)])
    presented_id, presented = (
        _answer_text(answer, "GET", path) for answer, path in zip(answers, paths, strict=True)
    )
    return presented_id, presented
