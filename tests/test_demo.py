"""The quickstart demo runs, shows the whole lifecycle, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import cloudvm
from cloudvm.testing import import_program

from .support import processes_mentioning, wait_until

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.py"


async def test_quickstart_runs_the_whole_lifecycle(tmp_path: Path) -> None:
    # Its state dir goes under tmp_path (TMPDIR): processes of other test runs
    # on the machine never mention it.
    with anyio.fail_after(90):
        result = await anyio.run_process(
            [sys.executable, str(QUICKSTART)],
            check=False,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "host keys verified through the metadata tunnel" in out
    assert out.count("hello from") == 3
    assert "leader" in out
    assert "0 instances left" in out
    assert processes_mentioning(str(tmp_path)) == []
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_quickstart_cancelled_twice_still_destroys_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A supervisor cancels main, then cancels it again while it cleans up
    # (asyncio's own Task.cancel both times, which anyio's shield does not
    # stop): the clean-up runs to its end all the same. The demo's state dir
    # is kept after main ends, so that what its destroys left shows.
    state_dir = tmp_path / "state"

    @contextlib.contextmanager
    def kept_dir(prefix: str = "") -> Iterator[str]:
        state_dir.mkdir()
        yield str(state_dir)

    quickstart = await anyio.to_thread.run_sync(import_program, QUICKSTART)
    monkeypatch.setattr(quickstart.tempfile, "TemporaryDirectory", kept_dir)
    task = asyncio.ensure_future(quickstart.main())

    def instance_dirs() -> list[Path]:
        return list(state_dir.glob("instances/lb-*"))

    try:
        with anyio.fail_after(90):
            while len([d for d in instance_dirs() if (d / "address").exists()]) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            task.cancel()
            # Until the first destroy is done (no event marks it: poll).
            while len(instance_dirs()) == 3:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        left = instance_dirs()
    finally:
        if not task.done():  # the test failed early: main ends before the sweep below
            task.cancel()
            await asyncio.wait([task])
        await _destroy_all(state_dir)
    assert left == []
    # The fork server exits by itself once it has no instance.
    await wait_until(lambda: not processes_mentioning(str(tmp_path)), timeout=30)


async def _destroy_all(state_dir: Path) -> None:
    driver = cloudvm.load_driver("loopback")
    async with await driver.instance_set(
        {"state_dir": str(state_dir)}, cloudvm.InstanceSetID("demo"), {}, logging.getLogger("t")
    ) as instance_set:
        for instance in await instance_set.instances():
            await instance.destroy()
