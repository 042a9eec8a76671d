"""examples/ec2_fleet.py against moto, with a host behind each instance
(ec2_hosts.py), and its sample config examples/config/ec2.yaml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from cloudvm_ec2 import EC2Config
from ec2_hosts import hosted_driver
from ec2_support import CREDENTIALS, World

yaml = pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SAMPLE = EXAMPLES / "config" / "ec2.yaml"


def sample_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    return config


def test_the_sample_config_is_valid_and_documents_every_key() -> None:
    EC2Config.model_validate(sample_config())
    text = SAMPLE.read_text(encoding="utf-8")
    undocumented = [
        key for key in EC2Config.model_fields if not re.search(rf"^(# )?{key}:", text, re.M)
    ]
    assert undocumented == []


async def test_the_fleet_example_runs_on_moto(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        **sample_config(),
        "endpoint_url": world.url,
        "subnet_ids": world.subnet_ids[:1],
        "security_group_ids": [world.security_group_id],
        **CREDENTIALS,
    }
    path = tmp_path / "ec2.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("ec2_fleet")

    async with hosted_driver(world.url) as driver:
        outputs = await example.main(
            ["--config", str(path), "--image", world.image_id, "--count", "2",
             "--command", "echo proven on $(hostname)", "--poll-interval", "0.1",
             "--boot-timeout", "60"],
            driver=driver,
        )  # fmt: skip
        assert driver.hosts == {}  # every host halted with its instance
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
    # Nothing is left running on the (fake) account.
    reservations = world.ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    assert reservations == []
