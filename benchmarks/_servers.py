"""A process full of SSH test servers, for the fan-out and memory cases.

Run as ``python benchmarks/_servers.py COUNT PUBLIC_KEY_FILE``: starts COUNT
in-process asyncssh servers (:class:`cloudvm.testing.SSHTestServer`, each with
an IMDSv2 metadata service holding its own instance id and secret), prints one
JSON line ``[{"port", "instance_id", "secret"}, ...]`` and serves until its
standard input closes. Keeping the servers in their own process means the
client being measured does not also pay for the servers' half of each
handshake; :class:`ServerFleet` runs it from the bench.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncssh

from cloudvm.driverkit import SECRET_TAG, new_secret
from cloudvm.testing import IMDSv2Service, SSHTestServer

__all__ = ["ServerFleet", "raise_file_limit"]

_START_TIMEOUT = 300.0  # seconds for the fleet to come up


def raise_file_limit() -> None:
    """Allow as many open files as the hard limit does (1000 hosts need more
    than the usual soft limit of 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _tags(secret: str) -> Any:
    return lambda: {SECRET_TAG: secret}


async def _serve(count: int, key_file: Path) -> None:
    raise_file_limit()
    key = asyncssh.read_public_key(str(key_file))
    hosts = []
    async with contextlib.AsyncExitStack() as stack:
        for index in range(count):
            instance_id = f"i-bench{index:05d}"
            secret = new_secret()
            server = SSHTestServer(
                authorized_keys=[key], metadata=IMDSv2Service(instance_id, _tags(secret))
            )
            await stack.enter_async_context(server)
            hosts.append({"port": server.port, "instance_id": instance_id, "secret": secret})
        print(json.dumps(hosts), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


class ServerFleet:
    """Starts ``_servers.py`` in a child process; a context manager."""

    def __init__(self, count: int, key_file: Path) -> None:
        self._count = count
        self._key_file = key_file
        self._process: subprocess.Popen[str] | None = None
        self.hosts: list[dict[str, Any]] = []

    def __enter__(self) -> ServerFleet:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(self._count), str(self._key_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError("the SSH server fleet did not start (see its stderr)")
        self.hosts = json.loads(line)
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    anyio.run(_serve, int(sys.argv[1]), Path(sys.argv[2]))
