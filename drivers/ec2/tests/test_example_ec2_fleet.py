"""examples/ec2_fleet.py against moto, with a host behind each instance
(ec2_hosts.py), on its sample config pointed there
(tests/examples/test_sample_configs.py checks the sample itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloudvm_ec2 import EC2Config
from ec2_hosts import hosted_driver
from ec2_support import CREDENTIALS, World

from cloudvm.testing import load_sample_config, run_example

pytest.importorskip("yaml")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


async def test_the_fleet_example_runs_on_moto(world: World, tmp_path: Path) -> None:
    local = {
        "endpoint_url": world.url,
        "subnet_ids": world.subnet_ids[:1],
        "security_group_ids": [world.security_group_id],
        **CREDENTIALS,
    }
    outputs = await run_example(
        EXAMPLES / "ec2_fleet.py",
        *("--image", world.image_id, "--command", "echo proven on $(hostname)"),
        *("--poll-interval", "0.1", "--boot-timeout", "60"),
        config=load_sample_config(EXAMPLES / "config" / "ec2.yaml", EC2Config, local),
        directory=tmp_path,
        driver=hosted_driver(world.url),
    )
    assert len(outputs) == 2
    assert all(output.startswith("proven on ") for output in outputs.values())
    # Nothing is left running on the (fake) account.
    reservations = world.ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    assert reservations == []
