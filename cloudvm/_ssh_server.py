"""The SSH server side of an instance: key login and the metadata channel."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import asyncssh

from ._http_server import HTTPHandler, serve_http

__all__ = ["METADATA_HOST", "METADATA_PORT", "InstanceSSHServer"]

METADATA_HOST = "169.254.169.254"
METADATA_PORT = 80


class InstanceSSHServer(asyncssh.SSHServer):
    """Accepts public-key logins for ``username`` (any user when None) with one
    of ``authorized_keys``, and answers direct-tcpip channels to
    169.254.169.254:80 with ``metadata`` (an HTTP handler) in-process. Every
    other forwarding request is refused, as is every login when no key is
    authorised. ``on_connect`` / ``on_close`` observe connections."""

    def __init__(
        self,
        *,
        username: str | None,
        authorized_keys: Sequence[asyncssh.SSHKey],
        metadata: HTTPHandler | None,
        on_connect: Callable[[asyncssh.SSHServerConnection], None] | None = None,
        on_close: Callable[[asyncssh.SSHServerConnection], None] | None = None,
    ) -> None:
        self._username = username
        self._keys = {key.public_data for key in authorized_keys}
        self._metadata = metadata
        self._on_connect = on_connect
        self._on_close = on_close
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        if self._on_connect:
            self._on_connect(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_close and self._conn is not None:
            self._on_close(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        user_ok = self._username is None or username == self._username
        return user_ok and key.public_data in self._keys

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHSocketSessionFactory:
        if self._metadata is not None and (dest_host, dest_port) == (METADATA_HOST, METADATA_PORT):
            return functools.partial(serve_http, self._metadata)
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "this host forwards only to its metadata service",
        )
