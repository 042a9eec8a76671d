"""Instances are forked from one server per state dir, which exits when idle."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import anyio
import asyncssh

import cloudvm

from ..support import processes_mentioning, wait_until
from .conftest import SMALL, booted, new_set


def fork_servers(state_dir: Path) -> list[int]:
    """The fork servers of ``state_dir``: its instances are forked from one,
    so they share its command line; the server is the one whose parent is not
    among them."""
    pids = processes_mentioning(f"--fork-server {state_dir}")
    return [pid for pid in pids if _parent(pid) not in pids]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return 0


async def make(iset: cloudvm.InstanceSet, key: asyncssh.SSHKey | None = None) -> cloudvm.Instance:
    public = key.convert_to_public() if key else None
    return await iset.create(SMALL, cloudvm.ImageID("local"), {}, cloudvm.InitCommand(""), public)


async def test_one_server_forks_every_instance_and_exits_when_idle(
    state_dir: Path, client_key: asyncssh.SSHKey
) -> None:
    async with await new_set(state_dir) as iset:
        made = [await make(iset, client_key) for _ in range(3)]
        assert len(fork_servers(state_dir)) == 1
        mode = (state_dir / "forkserver.sock").stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        for instance in made:
            inst = await booted(iset, instance.id)
            async with cloudvm.SSHExecutor(inst, signers=[client_key]) as ex:
                assert await ex.execute("echo $$") != (b"", b"")
        for instance in made:
            await instance.destroy()
    # leaving the set waited for the idle server to go
    assert processes_mentioning(str(state_dir)) == []
    assert not (state_dir / "forkserver.sock").exists()


async def test_a_killed_server_is_replaced_by_the_next_create(state_dir: Path) -> None:
    async with await new_set(state_dir) as iset:
        first = await make(iset)
        (server,) = fork_servers(state_dir)
        os.kill(server, signal.SIGKILL)
        await wait_until(lambda: server not in fork_servers(state_dir))
        assert (state_dir / "forkserver.sock").exists()
        second = await make(iset)
        assert [p for p in fork_servers(state_dir) if p != server]
        for instance in (first, second):
            await booted(iset, instance.id)  # the first outlived its server
            await instance.destroy()


async def test_without_the_fork_server_each_instance_starts_its_own_interpreter(
    state_dir: Path,
) -> None:
    async with await new_set(state_dir, fork_server=False) as iset:
        instance = await make(iset)
        await booted(iset, instance.id)
        assert fork_servers(state_dir) == []
        await instance.destroy()


async def test_the_server_forks_only_instance_ids(state_dir: Path) -> None:
    async with await new_set(state_dir) as iset:
        instance = await make(iset)
        path = str(state_dir / "forkserver.sock")

        def ask(request: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.connect(path)
                conn.sendall(request)
                return conn.recv(100)

        for request in (b"../../etc\n", b"lb-../x\n"):
            assert await anyio.to_thread.run_sync(ask, request) == b"error not an instance id\n"
        await instance.destroy()


async def test_instances_destroyed_while_they_start_leave_nothing(state_dir: Path) -> None:
    # destroy() lands while each instance process is still starting up
    async with await new_set(state_dir) as iset:
        for _ in range(8):
            await (await make(iset)).destroy()
        assert await iset.instances() == []
        left = await anyio.to_thread.run_sync(lambda: list((state_dir / "instances").iterdir()))
        assert left == []
