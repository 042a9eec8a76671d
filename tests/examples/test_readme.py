"""The Python program in README.md runs as written."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio

from ..support import processes_mentioning

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.DOTALL | re.MULTILINE)


async def test_the_readme_program_runs_as_written(tmp_path: Path) -> None:
    # The complete program (other blocks may be fragments of a dispatcher).
    [program] = [
        block
        for block in python_blocks(README.read_text(encoding="utf-8"))
        if "asyncio.run(main())" in block
    ]
    with anyio.fail_after(90):
        result = await anyio.run_process(
            [sys.executable, "-c", program],
            check=False,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # where its state dir goes
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == f"{os.uname().sysname}\n"  # uname -s, run on the instance
    # It destroyed its instance and removed its state dir.
    assert processes_mentioning(str(tmp_path)) == []
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []
