"""Proving that an SSH host is a given EC2 instance: its metadata service,
reached through the host's own connection, must name the instance and hand
back the secret it was created with."""

from __future__ import annotations

import asyncssh

from cloudvm.driverkit import IMDSV2_SECRET_PATH, verify_with_imdsv2

from ._config import EC2Config
from ._user_data import secret_from_user_data

__all__ = ["verify_through_imds"]


async def verify_through_imds(
    conn: asyncssh.SSHClientConnection,
    *,
    instance_id: str,
    secret: str,
    config: EC2Config,
    who: str,
) -> None:
    """IMDSv2 (token PUT, then GET) through ``conn`` of the instance id and
    of the secret (the ``cloudvm-secret`` tag, or the user-data line in
    ``secret_storage="user-data"`` mode), compared in constant time with
    ``secret``, within ``config.metadata_timeout``. Raises HostKeyError
    naming ``who`` if the answers differ or cannot be read."""
    user_data_mode = config.secret_storage != "tag"
    await verify_with_imdsv2(
        conn,
        instance_id=instance_id,
        secret=secret,
        secret_path="/latest/user-data" if user_data_mode else IMDSV2_SECRET_PATH,
        extract=secret_from_user_data if user_data_mode else None,
        timeout=config.metadata_timeout,
        who=who,
    )
