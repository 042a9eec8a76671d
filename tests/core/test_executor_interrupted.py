"""SSHExecutor.execute cancelled at each of its suspension points leaves nothing."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread
import asyncssh
import pytest

import cloudvm
from cloudvm.testing import CancelBy, SSHTestServer, cancel_at_each_suspension

from ..conftest import OpenSSHServer
from ..support import KnownKeyTarget


@pytest.mark.parametrize("by", [CancelBy.TASK, CancelBy.ANYIO])
@pytest.mark.parametrize(
    ("kind", "output"),
    [("asyncssh", "small"), ("openssh", "small"), ("openssh", "over-the-cap")],
)
async def test_execute_cancelled_anywhere_leaves_no_session_command_or_connection(
    client_key: asyncssh.SSHKey,
    request: pytest.FixtureRequest,
    by: CancelBy,
    kind: str,
    output: str,
) -> None:
    async with SSHTestServer(authorized_keys=[client_key]) as server:
        idle: Callable[[], bool]
        if kind == "asyncssh":
            target = KnownKeyTarget(server.address, "u", server.host_key)

            def idle() -> bool:
                runner = server._runner
                return runner is not None and not runner.running and not server.open_connections
        else:
            sshd: OpenSSHServer = request.getfixturevalue("openssh_server")
            target = KnownKeyTarget(sshd.address, sshd.user, sshd.host_key)

            def idle() -> bool:
                return not sshd.session_pids()  # sshd forks a process per connection

        command = 'cat; printf %s "$V"' if output == "small" else 'cat; yes "$V"'

        async def operation() -> None:
            async with cloudvm.SSHExecutor(target, signers=[client_key], max_output=4096) as ex:
                try:
                    out, _ = await ex.execute(command, stdin=b"in:", env={"V": "v a l"})
                except cloudvm.OutputLimitError as exc:
                    out = exc.stdout
                    assert output == "over-the-cap"
            expected = b"in:v a l" if output == "small" else b"in:v a l\n"
            assert out.startswith(expected)
            assert len(out) == (len(expected) if output == "small" else 4096)

        async def after_each(point: int, completed: bool) -> None:
            # Whatever point the run was cancelled at, its command (if it
            # started) is ended and its connection closed.
            with anyio.fail_after(30):
                while not await anyio.to_thread.run_sync(idle):  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(0.01)

        cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after_each)
    assert cancelled > 5
