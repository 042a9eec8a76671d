"""examples/azure_fleet.py against the fake ARM server, with a host behind
each VM (as in test_azure_conformance.py), and its sample config
examples/config/azure.yaml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from azure_fake_arm import FakeARM
from azure_support import FakeCredential, make_config
from cloudvm_azure import AzureConfig
from test_azure_conformance import azure_hosted
from test_azure_lifecycle import assert_nothing_left

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SAMPLE = EXAMPLES / "config" / "azure.yaml"


def sample_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    return config


def test_the_sample_config_is_valid_and_documents_every_key() -> None:
    AzureConfig.model_validate(sample_config())
    text = SAMPLE.read_text(encoding="utf-8")
    undocumented = [
        key for key in AzureConfig.model_fields if not re.search(rf"^(# )?{key}:", text, re.M)
    ]
    assert undocumented == []


async def test_the_fleet_example_runs_on_the_fake_arm(
    arm: FakeARM, credential: FakeCredential, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "azure.yaml"
    path.write_text(yaml.safe_dump({**sample_config(), **make_config(arm)}))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("azure_fleet")

    async with azure_hosted(arm, credential) as driver:
        outputs = await example.main(
            ["--config", str(path), "--count", "2", "--command", "echo proven on $(hostname)",
             "--poll-interval", "0.05", "--boot-timeout", "60"],
            driver=driver,
        )  # fmt: skip
        assert driver.hosts == {}  # every host halted with its VM
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
    assert_nothing_left(arm)  # no VM, NIC or disk is left in the (fake) subscription
