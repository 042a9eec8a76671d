"""With real SSH: a worker is IDLE only after its host key is proven and the
boot probe ran on it; a host that cannot be proven is destroyed, never used."""

from __future__ import annotations

import asyncssh
import pytest

from cloudvm import ExecutorTarget, HostKeyError, SSHExecutor
from cloudvm.pool import WorkerPool, WorkerState
from cloudvm.testing import FakeCloud

from ..support import wait_until
from ._support import SET, SMALL, make_config, states


class _Liar:
    """A target whose proof always fails, as a host that is not the instance."""

    def __init__(self, target: ExecutorTarget) -> None:
        self._target = target

    @property
    def address(self) -> str:
        return self._target.address

    @property
    def remote_user(self) -> str:
        return self._target.remote_user

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        raise HostKeyError("not the instance")


@pytest.mark.parametrize("proven", [True, False])
async def test_only_a_proven_host_becomes_idle(proven: bool, client_key: asyncssh.SSHKey) -> None:
    config = make_config(boot_probe_command="echo ready > booted", probe_interval=0.2)

    def factory(target: ExecutorTarget) -> SSHExecutor:
        return SSHExecutor(target if proven else _Liar(target), signers=[client_key])

    async with (
        FakeCloud({"ssh": True, "rate_limits": None}) as cloud,
        WorkerPool(
            await cloud.instance_set(SET),
            config,
            signers=[client_key],
            executor_factory=None if proven else factory,
        ) as pool,
    ):
        assert pool.create(SMALL)
        if proven:
            await wait_until(lambda: states(pool) == {WorkerState.IDLE: 1}, timeout=60)
            (worker,) = pool.workers()
            server = cloud.ssh_server(worker.id)
            assert server is not None
            assert "echo ready > booted" in server.commands
            async with pool.lease(SMALL) as leased:
                out, _ = await leased.execute("cat booted")
            assert out == b"ready\n"
            await pool.drain()
        else:
            await wait_until(
                lambda: (
                    bool(cloud.calls)
                    and not pool.workers()
                    and len([c for c in cloud.calls if c.operation == "destroy"]) >= 1
                ),
                timeout=60,
            )
            assert cloud.instance_ids(SET) == []
            assert all(c.operation != "create" or c.outcome == "ok" for c in cloud.calls)
