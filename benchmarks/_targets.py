"""Small ExecutorTargets for the bench: a known host key, or the metadata tunnel."""

from __future__ import annotations

import asyncssh

import cloudvm
from cloudvm.driverkit import verify_with_imdsv2

__all__ = ["KnownKeyTarget", "MetadataTarget"]


class KnownKeyTarget:
    """Accepts exactly the host key it was given (the latency case's sshd)."""

    def __init__(self, address: str, user: str, key: asyncssh.SSHKey) -> None:
        self.address = address
        self.remote_user = user
        self._key = key.public_data

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        if key.public_data != self._key:
            raise cloudvm.HostKeyError(f"{self.address}: not the expected host key")

    def __str__(self) -> str:
        return self.address


class MetadataTarget:
    """Proves the host exactly as the loopback, fake and EC2 drivers do
    (:func:`cloudvm.driverkit.verify_with_imdsv2`): through the SSH
    connection, ask the metadata service (IMDSv2) for the instance id and the
    secret tag, and compare them with what "create" recorded."""

    def __init__(self, address: str, user: str, instance_id: str, secret: str) -> None:
        self.address = address
        self.remote_user = user
        self._instance_id = instance_id
        self._secret = secret

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        if conn is None:
            raise NotImplementedError("verified only through a live connection")
        await verify_with_imdsv2(
            conn, instance_id=self._instance_id, secret=self._secret, who=str(self)
        )

    def __str__(self) -> str:
        return f"{self._instance_id}@{self.address}"
