"""Test helpers shared by the core and loopback tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncssh

import cloudvm


class KnownKeyTarget:
    """An ExecutorTarget that accepts exactly one host key (or raises what it is told)."""

    def __init__(
        self,
        address: str,
        user: str,
        key: asyncssh.SSHKey | None,
        *,
        error: BaseException | None = None,
    ) -> None:
        self.address = address
        self.remote_user = user
        self._key = key
        self._error = error
        #: Every key verify_host_key was asked about, in order.
        self.verified: list[bytes] = []

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        self.verified.append(key.public_data)
        if self._error is not None:
            raise self._error
        if self._key is None or key.public_data != self._key.public_data:
            raise cloudvm.HostKeyError("not the expected host key")

    def __str__(self) -> str:
        return f"target {self.address}"


def open_sockets() -> int:
    """How many sockets this process holds open right now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the condition has no event to wait on
            await anyio.sleep(0.01)
