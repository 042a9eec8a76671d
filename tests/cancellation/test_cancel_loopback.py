"""Cancelling create, set_tags and destroy at each suspension point on the
loopback cloud: afterwards every instance is whole (tagged as asked, with its
process, which boots) or gone (no process, no state)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from cloudvm import InitCommand, Instance, InstanceSet
from cloudvm.testing import CancelBy, cancel_at_each_suspension

from ..loopback.conftest import SMALL, booted, new_set
from ..support import processes_mentioning

OLD = {"job": "fuzz", "phase": "old"}
NEW = {"job": "fuzz", "phase": "new", "extra": "x"}


@pytest.fixture
async def iset(state_dir: Path) -> AsyncIterator[InstanceSet]:
    async with await new_set(state_dir) as instance_set:
        yield instance_set


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "cloud"


async def check_whole(iset: InstanceSet, state_dir: Path) -> None:
    """Every listed instance carries old or new tags and boots (its process
    exists); no half-created instance is left on disk."""
    for instance in await iset.instances():
        assert instance.tags in (OLD, NEW), instance.tags
        await booted(iset, instance.id)
    names = await anyio.to_thread.run_sync(
        lambda: {p.name for p in (state_dir / "instances").iterdir()}
    )
    assert all(name.startswith("lb-") for name in names), names


async def destroy_all(iset: InstanceSet, state_dir: Path) -> None:
    for instance in await iset.instances():
        await instance.destroy()
    assert await iset.instances() == []
    with anyio.fail_after(20):
        while await anyio.to_thread.run_sync(processes_mentioning, str(state_dir)):  # noqa: ASYNC110
            await anyio.sleep(0.02)  # other processes: nothing to wait on


async def fuzz(
    operation: Callable[[], Awaitable[object]],
    by: CancelBy,
    iset: InstanceSet,
    state_dir: Path,
    reset: Callable[[], Awaitable[None]],
) -> int:
    async def after_each(point: int, completed: bool) -> None:
        await check_whole(iset, state_dir)
        await reset()

    await reset()
    cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after_each)
    await destroy_all(iset, state_dir)
    return cancelled


async def make(iset: InstanceSet) -> Instance:
    return await iset.create(SMALL, "local", OLD, InitCommand(""), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_create_leaves_a_whole_instance_or_none(
    iset: InstanceSet, state_dir: Path, by: CancelBy
) -> None:
    cancelled = await fuzz(
        lambda: make(iset), by, iset, state_dir, reset=lambda: destroy_all(iset, state_dir)
    )
    assert cancelled >= 1


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_set_tags_leaves_old_or_new_tags(
    iset: InstanceSet, state_dir: Path, by: CancelBy
) -> None:
    current: list[Instance] = []

    async def reset() -> None:
        await destroy_all(iset, state_dir)
        current[:] = [await make(iset)]

    assert await fuzz(lambda: current[0].set_tags(NEW), by, iset, state_dir, reset) >= 1


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelled_destroy_leaves_the_instance_whole_or_gone(
    iset: InstanceSet, state_dir: Path, by: CancelBy
) -> None:
    current: list[Instance] = []

    async def reset() -> None:
        await destroy_all(iset, state_dir)
        current[:] = [await booted(iset, (await make(iset)).id)]

    assert await fuzz(lambda: current[0].destroy(), by, iset, state_dir, reset) >= 1
