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


def programs() -> list[str]:
    """README's complete programs: every Python block that runs itself."""
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    return [block for block in blocks if "asyncio.run(main())" in block]


async def run_program(program: str, tmp_path: Path) -> str:
    with anyio.fail_after(90):
        result = await anyio.run_process(
            [sys.executable, "-c", program],
            check=False,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # where its state dir goes
        )
    assert result.returncode == 0, result.stderr.decode()
    # It destroyed what it made and removed its state and temporary dirs.
    assert processes_mentioning(str(tmp_path)) == []
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []
    return result.stdout.decode()


def test_every_python_block_of_the_readme_is_a_complete_program() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == len(programs()) == 2


async def test_the_readme_program_runs_as_written(tmp_path: Path) -> None:
    [program] = [p for p in programs() if '"loopback"' in p]
    output = await run_program(program, tmp_path)
    assert output == f"{os.uname().sysname}\n"  # uname -s, run on the instance


async def test_the_readme_dispatcher_runs_as_written(tmp_path: Path) -> None:
    [program] = [p for p in programs() if "WorkerPool" in p]
    assert await run_program(program, tmp_path) == "12 jobs done\n"
