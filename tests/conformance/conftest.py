"""Conformance fixtures: a private loopback cloud checked empty at the end,
and no process-wide fake cloud outliving its test."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import cloudvm
from cloudvm.testing import close_named_clouds

from ..support import processes_mentioning, wait_until

LOOPBACK_SMALL = cloudvm.InstanceType(
    name="small", provider_type="loopback.small", vcpus=1, ram=2**29,
    scratch=0, included_scratch=0, added_scratch=0, price=0.01,
)  # fmt: skip
FAKE_SMALL = cloudvm.InstanceType(
    name="small", provider_type="t3.small", vcpus=2, ram=2**31,
    scratch=0, included_scratch=0, added_scratch=0, price=0.02,
)  # fmt: skip


@pytest.fixture
async def state_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """The loopback cloud of one test. At the end no instance and no instance
    process may remain."""
    state = tmp_path / "cloud"
    yield state
    leftovers = sorted(p.name for p in (state / "instances").glob("*")) if state.exists() else []
    for pid in processes_mentioning(str(state)):
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not processes_mentioning(str(state)))
    assert leftovers == [], "the test left loopback instances behind"


@pytest.fixture(autouse=True)
async def _close_named_clouds() -> AsyncIterator[None]:
    yield
    await close_named_clouds()
