"""examples/gce_fleet.py against the local Compute API, with a host behind
each instance (as in test_gce_conformance.py), and its sample config
examples/config/gce.yaml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from cloudvm_gce import GCEConfig
from gce_fake_api import FakeCompute
from gce_helpers import gce_config
from test_gce_conformance import gce_boot

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SAMPLE = EXAMPLES / "config" / "gce.yaml"


def sample_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    return config


def test_the_sample_config_is_valid_and_documents_every_key() -> None:
    GCEConfig.model_validate(sample_config())
    text = SAMPLE.read_text(encoding="utf-8")
    undocumented = [
        key for key in GCEConfig.model_fields if not re.search(rf"^(# )?{key}:", text, re.M)
    ]
    assert undocumented == []


async def test_the_fleet_example_runs_on_the_local_api(
    fake_gce: FakeCompute, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gce.yaml"
    path.write_text(yaml.safe_dump({**sample_config(), **gce_config(fake_gce)}))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("gce_fleet")

    async with gce_boot(fake_gce) as driver:
        outputs = await example.main(
            ["--config", str(path), "--count", "2", "--command", "echo proven on $(hostname)",
             "--poll-interval", "0.05", "--boot-timeout", "60"],
            driver=driver,
        )  # fmt: skip
        assert driver.hosts == {}  # every host halted with its instance
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
    assert fake_gce.instances == {}  # nothing is left on the (fake) project
    # It used the Compute API's own calls, with the example's default image.
    inserts = [r for r in fake_gce.requests if r.method == "insert"]
    assert len(inserts) == 2
