"""examples/dispatcher.py runs (few jobs) on the fake cloud with real SSH and
leaves nothing behind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "dispatcher.py"


async def test_the_dispatcher_example_runs_every_job_and_leaves_no_instance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = importlib.util.spec_from_file_location("dispatcher_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dispatcher_example"] = module
    try:
        spec.loader.exec_module(module)
        code = await module.main(["--jobs", "24"])
    finally:
        del sys.modules["dispatcher_example"]
    out = capsys.readouterr().out
    assert code == 0, out
    assert "24/24 jobs done (0 wrong), 0 instances left" in out
    assert EXAMPLE.read_text().rstrip().endswith("sys.exit(asyncio.run(main()))")
