"""SSHTestServer.start and stop, cancelled at each suspension point, leave no
listener, socket or work dir behind."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cloudvm.testing import CancelBy, SSHTestServer, cancel_at_each_suspension

from ..support import open_sockets


async def leftovers(tmp: Path) -> list[Path]:
    return await anyio.to_thread.run_sync(lambda: list(tmp.iterdir()))


@pytest.mark.parametrize("by", list(CancelBy))
async def test_a_cancelled_start_leaves_nothing(private_tmp: Path, by: CancelBy) -> None:
    sockets = await anyio.to_thread.run_sync(open_sockets)
    servers: list[SSHTestServer] = []

    async def start() -> None:
        servers.append(SSHTestServer())
        await servers[-1].start()

    async def after_each(point: int, completed: bool) -> None:
        if completed:
            assert servers[-1].port and len(await leftovers(private_tmp)) == 1
            await servers[-1].stop()
        assert servers[-1].port == 0
        assert await leftovers(private_tmp) == []
        assert await anyio.to_thread.run_sync(open_sockets) <= sockets

    assert await cancel_at_each_suspension(start, by=by, after_each=after_each) >= 1


@pytest.mark.parametrize("by", list(CancelBy))
async def test_a_cancelled_stop_still_stops(private_tmp: Path, by: CancelBy) -> None:
    sockets = await anyio.to_thread.run_sync(open_sockets)
    servers: list[SSHTestServer] = []

    async def stop() -> None:
        servers.append(await SSHTestServer().start())
        await servers[-1].stop()

    async def after_each(point: int, completed: bool) -> None:
        if servers:
            if servers[-1].port:  # cancelled before its stop began: still whole
                assert len(await leftovers(private_tmp)) == 1
                await servers[-1].stop()
            servers.clear()
        assert await leftovers(private_tmp) == []
        assert await anyio.to_thread.run_sync(open_sockets) <= sockets

    assert await cancel_at_each_suspension(stop, by=by, after_each=after_each) >= 1
