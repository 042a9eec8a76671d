"""examples/test_my_dispatcher.py passes, run by pytest as a user runs it:
on its own, in pytest-asyncio's default strict mode."""

from __future__ import annotations

import sys

import anyio

from .conftest import EXAMPLES


async def test_the_dispatcher_tests_pass_in_strict_mode() -> None:
    with anyio.fail_after(110):
        result = await anyio.run_process(
            [
                sys.executable, "-m", "pytest", str(EXAMPLES / "test_my_dispatcher.py"),
                "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=strict",
            ],
            check=False,
            cwd=EXAMPLES.parent,
        )  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "6 passed" in out
