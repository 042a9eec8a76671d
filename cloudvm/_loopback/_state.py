"""The loopback cloud's on-disk state, shared by the driver and instance servers.

Layout under ``state_dir``::

    instances/<instance id>/
        record.json   what create recorded (set id, secret, ...), mode 0600
        tags.json     the user's tags, replaced atomically by set_tags
        lock          held (flock) by the instance's server for its whole life
        pid           the server's process id
        address       "127.0.0.1:<port>" once the server listens
        work/         the directory commands run in
        init.log      output of the init command
        server.log    the server's own log
    quota.lock        serialises "count instances, then add one"

Every file is written to a temporary name and renamed, so a reader in another
process never sees half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import ConfigError

__all__ = [
    "InstanceRecord",
    "instance_dirs",
    "is_instance_id",
    "is_running",
    "new_instance_id",
    "prepare_state_dir",
    "read_address",
    "read_record",
    "read_tags",
    "try_lock",
    "write_atomic",
]

RECORD = "record.json"
TAGS = "tags.json"
LOCK = "lock"
PID = "pid"
ADDRESS = "address"
WORK = "work"
INIT_LOG = "init.log"
SERVER_LOG = "server.log"
INSTANCES = "instances"
QUOTA_LOCK = "quota.lock"

_INSTANCE_ID = re.compile(r"lb-[0-9a-f]{16}\Z")


def new_instance_id() -> str:
    """A fresh instance id, of the only form :func:`is_instance_id` accepts."""
    return f"lb-{secrets.token_hex(8)}"


def is_instance_id(text: str) -> bool:
    """Whether ``text`` has the form create gives ids (so it is a safe file name)."""
    return bool(_INSTANCE_ID.match(text))


def prepare_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` and its ``instances`` dir (mode 0700) if missing,
    and refuse either when it is not a directory owned by this user, or is
    writable by its group or by others (whoever can plant records there
    controls what the driver signals and deletes). Raises ConfigError."""
    for path in (state_dir, state_dir / INSTANCES):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=path is state_dir)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"loopback state_dir: {path} is not a directory")
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"loopback state_dir: {path} belongs to uid {info.st_uid}, not to this user"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"loopback state_dir: {path} is writable by its group or by others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); make it 0700"
            )


@dataclasses.dataclass(frozen=True)
class InstanceRecord:
    """What create recorded about an instance; never changes afterwards."""

    id: str
    set_id: str
    provider_type: str
    image_id: str
    created_at: str  # ISO 8601, UTC
    price: float
    remote_user: str
    secret: str = dataclasses.field(repr=False)
    init_command: str = dataclasses.field(repr=False)
    authorized_key: str | None = dataclasses.field(repr=False)  # OpenSSH public key line
    boot_delay: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> InstanceRecord:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def instance_dirs(state_dir: Path) -> Iterator[Path]:
    root = state_dir / INSTANCES
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if is_instance_id(entry.name):  # not ".<id>.creating", nor a planted name
            yield entry


def read_record(instance_dir: Path) -> InstanceRecord | None:
    """The record, or None if the instance is gone (or not fully created)."""
    try:
        return InstanceRecord.from_json((instance_dir / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_tags(instance_dir: Path) -> dict[str, str] | None:
    try:
        tags: dict[str, str] = json.loads((instance_dir / TAGS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return tags


def read_address(instance_dir: Path) -> str:
    try:
        return (instance_dir / ADDRESS).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def try_lock(path: Path) -> int | None:
    """Take an exclusive flock on ``path`` without waiting. Returns the open
    descriptor (close it to unlock), or None if another holder has it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def is_running(instance_dir: Path) -> bool:
    """Whether the instance's server process is alive (it holds the lock)."""
    fd = try_lock(instance_dir / LOCK)
    if fd is None:
        return (instance_dir / LOCK).exists()
    os.close(fd)
    return False
