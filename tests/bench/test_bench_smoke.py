"""Every benchmark case runs with ``--quick`` so the benchmarks never rot.

Nothing here looks at a timing: each case must complete and write its JSON.
One run per case, so that a slow machine gives each its own time budget.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).parents[2] / "benchmarks" / "run.py"


def _cases() -> list[str]:
    # The names registered in run.py's CASES table: a case added there is
    # smoke-tested here without anyone remembering to list it.
    table = RUN.read_text().split("CASES:", 1)[1].split("}", 1)[0]
    return re.findall(r'^\s*"([a-z0-9_-]+)":', table, re.MULTILINE)


def test_the_case_table_is_found() -> None:
    assert {"latency", "fanout", "throttle", "memory", "cloud", "pool"} <= set(_cases())


@pytest.mark.parametrize("case", _cases())
def test_each_case_runs_quick_and_writes_its_json(case: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--case", case, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [c["name"] for c in summary["cases"]] == [case]
    (result,) = summary["cases"]
    assert (tmp_path / f"{case}.json").exists()
    # A case either measured something or said why it could not.
    assert result["rows"] or result["skipped"], result
    assert not (result["skipped"] or "").startswith("failed"), result
    assert summary["machine"]["cores"]
    if result["rows"]:
        assert "median" in done.stdout
