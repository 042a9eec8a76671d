"""examples/azure_fleet.py against the fake ARM server, with a host behind
each VM (as in test_azure_conformance.py), on its sample config pointed there
(tests/examples/test_sample_configs.py checks the sample itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure_fake_arm import FakeARM
from azure_support import FakeCredential, make_config
from cloudvm_azure import AzureConfig
from test_azure_conformance import azure_hosted
from test_azure_lifecycle import assert_nothing_left

from cloudvm.testing import load_sample_config, run_example

pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


async def test_the_fleet_example_runs_on_the_fake_arm(
    arm: FakeARM, credential: FakeCredential, tmp_path: Path
) -> None:
    outputs = await run_example(
        EXAMPLES / "azure_fleet.py",
        *("--command", "echo proven on $(hostname)"),
        *("--poll-interval", "0.05", "--boot-timeout", "60"),
        config=load_sample_config(
            EXAMPLES / "config" / "azure.yaml", AzureConfig, make_config(arm)
        ),
        directory=tmp_path,
        driver=azure_hosted(arm, credential),
    )
    assert_nothing_left(arm)  # no VM, NIC or disk is left in the (fake) subscription
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
