"""Processes full of SSH test servers, for the fan-out and memory cases.

Run as ``python benchmarks/_servers.py COUNT PUBLIC_KEY_FILE [FIRST]``: starts
COUNT in-process asyncssh servers (:class:`cloudvm.testing.SSHTestServer`, each
with an IMDSv2 metadata service holding its own instance id and secret,
numbered from FIRST), prints one JSON line ``[{"port", "instance_id",
"secret"}, ...]`` and serves until its standard input closes. Keeping the
servers in their own processes means the client being measured does not also
pay for the servers' half of each handshake, and its CPU time is its own;
:class:`ServerFleet` spreads them over several such processes.
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


async def _serve(count: int, key_file: Path, first: int) -> None:
    raise_file_limit()
    key = asyncssh.read_public_key(str(key_file))
    hosts = []
    async with contextlib.AsyncExitStack() as stack:
        for index in range(first, first + count):
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
    """Starts ``_servers.py`` in ``processes`` child processes, the hosts
    dealt out evenly (so the servers' side of a fan-out uses every core the
    client leaves them); a context manager. ``hosts`` interleaves the
    processes, so any prefix of it is spread over all of them."""

    def __init__(self, count: int, key_file: Path, *, processes: int = 2) -> None:
        self._count = count
        self._key_file = key_file
        self._processes_wanted = max(1, min(processes, count))
        self._processes: list[subprocess.Popen[str]] = []
        self.hosts: list[dict[str, Any]] = []

    def __enter__(self) -> ServerFleet:
        shares = [
            self._count // self._processes_wanted
            + (1 if index < self._count % self._processes_wanted else 0)
            for index in range(self._processes_wanted)
        ]
        first = 0
        for share in shares:
            self._processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__)),
                        str(share),
                        str(self._key_file),
                        str(first),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            first += share
        groups = []
        for process in self._processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                self.__exit__()
                raise RuntimeError("the SSH server fleet did not start (see its stderr)")
            groups.append(json.loads(line))
        # Round-robin over the processes: host k is served by process k % P.
        for index in range(max(shares)):
            self.hosts.extend(group[index] for group in groups if index < len(group))
        return self

    def __exit__(self, *exc_info: object) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


if __name__ == "__main__":
    anyio.run(
        _serve, int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
    )
