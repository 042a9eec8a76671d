"""Every benchmark case runs with ``--quick`` so the benchmarks never rot.

Nothing here looks at a timing: the run must complete and write its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).parents[2] / "benchmarks" / "run.py"
CASES = {"latency", "fanout", "throttle", "memory", "cloud", "pool"}


def test_every_case_runs_quick_and_writes_its_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {case["name"] for case in summary["cases"]} == CASES
    for case in summary["cases"]:
        assert (tmp_path / f"{case['name']}.json").exists()
        # A case either measured something or said why it could not.
        assert case["rows"] or case["skipped"], case
        assert not (case["skipped"] or "").startswith("failed"), case
    assert summary["machine"]["cores"]
    assert "median" in done.stdout
