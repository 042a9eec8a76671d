"""examples/gce_fleet.py against the local Compute API, with a host behind
each instance (as in test_gce_conformance.py), on its sample config pointed
there (tests/examples/test_sample_configs.py checks the sample itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloudvm_gce import GCEConfig
from gce_fake_api import FakeCompute
from gce_helpers import gce_config
from test_gce_conformance import gce_boot

from cloudvm.testing import load_sample_config, run_example

pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


async def test_the_fleet_example_runs_on_the_local_api(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    config = load_sample_config(EXAMPLES / "config" / "gce.yaml", GCEConfig, gce_config(fake_gce))
    outputs = await run_example(
        EXAMPLES / "gce_fleet.py",
        *("--command", "echo proven on $(hostname)"),
        *("--poll-interval", "0.05", "--boot-timeout", "60"),
        config=config,
        directory=tmp_path,
        driver=gce_boot(fake_gce),
    )
    assert fake_gce.instances == {}  # nothing is left on the (fake) project
    # It used the Compute API's own calls, with the example's default image.
    assert len([r for r in fake_gce.requests if r.method == "insert"]) == 2
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
