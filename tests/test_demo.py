"""The quickstart demo runs, shows the whole lifecycle, and leaves nothing behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from .support import processes_mentioning

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
