"""Loopback fixtures: a private state dir per test, checked empty at the end."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import cloudvm

from ..support import processes_mentioning, wait_until

SMALL = cloudvm.InstanceType(
    name="small", provider_type="loopback.small", vcpus=1, ram=2**29,
    scratch=0, included_scratch=0, added_scratch=0, price=0.01,
)  # fmt: skip


@pytest.fixture
async def state_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """The loopback cloud of one test. At the end no instance and no instance
    process may remain: the test must have destroyed everything it made."""
    state = tmp_path / "cloud"
    yield state
    leftovers = sorted(p.name for p in (state / "instances").glob("*")) if state.exists() else []
    # Clean up whatever is left so one failure does not cascade, then fail.
    for pid in processes_mentioning(str(state)):
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not processes_mentioning(str(state)))
    assert leftovers == [], "the test left loopback instances behind"


async def new_set(state_dir: Path, set_id: str = "set-a", **config: Any) -> cloudvm.InstanceSet:
    driver = cloudvm.load_driver("loopback")
    return await driver.instance_set(
        {"state_dir": str(state_dir), **config},
        cloudvm.InstanceSetID(set_id),
        {},
        logging.getLogger("test.loopback"),
    )


@pytest.fixture
async def iset(state_dir: Path) -> AsyncIterator[cloudvm.InstanceSet]:
    async with await new_set(state_dir) as instance_set:
        yield instance_set


async def booted(
    instance_set: cloudvm.InstanceSet, instance_id: cloudvm.InstanceID, timeout: float = 20
) -> cloudvm.Instance:
    """Re-list until the instance has an address."""
    with anyio.fail_after(timeout):
        while True:
            for inst in await instance_set.instances():
                if inst.id == instance_id and inst.address:
                    return inst
            await anyio.sleep(0.05)
