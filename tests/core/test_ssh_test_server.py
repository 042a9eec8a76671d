"""cloudvm.testing.SSHTestServer behaves like a real host."""

from __future__ import annotations

import anyio
import asyncssh

from cloudvm.testing import SSHTestServer


async def _connect(server: SSHTestServer, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", server.port, username="u", client_keys=[key],
        known_hosts=None, agent_path=None, config=None,
    )  # fmt: skip


async def test_session_ends_when_the_command_exits_though_stdin_stays_open(
    client_key: asyncssh.SSHKey,
) -> None:
    # As with sshd: a client that never closes its input still gets the exit.
    async with SSHTestServer(authorized_keys=[client_key]) as server:
        async with await _connect(server, client_key) as conn:
            with anyio.fail_after(10):
                result = await conn.run("echo hi; exit 4")
        assert (result.stdout, result.exit_status) == ("hi\n", 4)
        assert server.commands == ["echo hi; exit 4"]


async def test_unknown_keys_are_refused(client_key: asyncssh.SSHKey) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    async with SSHTestServer(authorized_keys=[client_key]) as server:
        try:
            async with await _connect(server, stranger):
                raise AssertionError("a stranger logged in")
        except asyncssh.PermissionDenied:
            pass
        assert server.commands == []


async def test_stop_removes_the_work_directory(client_key: asyncssh.SSHKey) -> None:
    server = await SSHTestServer(authorized_keys=[client_key]).start()
    workdir = server.workdir
    async with await _connect(server, client_key) as conn:
        await conn.run("touch made-here", check=True)
    assert (workdir / "made-here").exists()
    await server.stop()
    assert not workdir.exists()
