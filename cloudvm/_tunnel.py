"""HTTP through an SSH connection: httpx over asyncssh direct-tcpip channels.

httpx does the HTTP (through httpcore and h11); this module only supplies an
httpcore network backend whose "TCP connections" are channels that the SSH
server opens on our behalf. That is how a driver reaches the cloud metadata
service (169.254.169.254:80) *as seen from inside the instance*.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import Iterable

import anyio
import asyncssh
import httpcore
import httpx

__all__ = ["METADATA_URL", "SSHTunnelTransport", "metadata_client"]

#: Where every cloud we support serves instance metadata.
METADATA_URL = "http://169.254.169.254"
# How long closing a channel may wait for the server's close before giving up.
_CLOSE_TIMEOUT = 5.0  # seconds
# The tunnel refuses TLS, but httpx builds an SSL context for every transport
# and by default loads the whole CA bundle into it (about 50 ms, measured in
# benchmarks/ fan-out); hand it this one, never used, instead.
_UNUSED_SSL_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _ChannelStream(httpcore.AsyncNetworkStream):
    def __init__(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with anyio.fail_after(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "read timed out") from exc
        except (OSError, asyncssh.Error) as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            with anyio.fail_after(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
        except (OSError, asyncssh.Error) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        # The close must finish even when the caller is being cancelled, or the
        # channel would stay half-open on the connection.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS through an SSH tunnel is not supported")

    def get_extra_info(self, info: str) -> typing.Any:
        return None


class _ChannelBackend(httpcore.AsyncNetworkBackend):
    """Opens each "TCP connection" as a direct-tcpip channel on ``conn``."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                reader, writer = await self._conn.open_connection(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"opening a channel to {host}:{port} timed out") from exc
        except (OSError, asyncssh.Error) as exc:
            raise httpcore.ConnectError(
                f"the SSH server refused a channel to {host}:{port}: {exc}"
            ) from exc
        return _ChannelStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class SSHTunnelTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through ``conn``: the SSH
    server connects to the request's host and port on our behalf, so the
    request is made from the server's point of view.

    Use it like any httpx transport::

        async with httpx.AsyncClient(transport=SSHTunnelTransport(conn)) as client:
            r = await client.get("http://169.254.169.254/latest/meta-data/instance-id")

    Only plain HTTP is supported. Closing the transport closes its channels,
    never ``conn``.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=_UNUSED_SSL_CONTEXT)
        # httpx has no public parameter for an httpcore network backend, so we
        # replace the pool it built; its request/response and error mapping stay.
        self._inner._pool = httpcore.AsyncConnectionPool(network_backend=_ChannelBackend(conn))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def metadata_client(
    conn: asyncssh.SSHClientConnection, *, timeout: float = 10.0, base_url: str = METADATA_URL
) -> httpx.AsyncClient:
    """An httpx client for the metadata service as seen from the SSH server's
    side of ``conn``. Use it as an async context manager; ``timeout`` bounds
    each phase of each request (seconds). The client never reads proxy
    settings from the environment."""
    return httpx.AsyncClient(
        transport=SSHTunnelTransport(conn),
        base_url=base_url,
        timeout=timeout,
        trust_env=False,
    )
