"""The command with the ec2 driver and no AWS credentials anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import cloudvm

pytest.importorskip("cloudvm_ec2")


async def test_no_credentials_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    config = tmp_path / "ec2.json"
    # Port 9 (discard) on loopback: nothing is ever sent anywhere.
    config.write_text(
        json.dumps(
            {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9", "admin_username": "a"}
        )
    )
    result = await cloudvm(
        "list", "--driver", "ec2", "--config", str(config),
        env={
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )  # fmt: skip
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "cloudvm: error: no AWS credentials were found. Looked in: "
        "the config (access_key_id and secret_access_key, or profile: none given); "
        "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set); "
        f"the shared credentials file {empty} and the AWS config file {empty} "
        "(profile 'default'); "
        "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI: not set); "
        "the instance metadata service (disabled by AWS_EC2_METADATA_DISABLED). "
        "Give access_key_id and secret_access_key or a profile in the config, "
        "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n"
    )


async def test_a_config_key_typo_suggests_the_closest_key(tmp_path: Path) -> None:
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({"regoin": "us-east-1", "admin_username": "admin"}))
    result = await cloudvm("list", "--driver", "ec2", "--config", str(config))
    assert result.code == 2
    assert result.stderr == (
        "cloudvm: error: invalid ec2 config: region: Field required; "
        "regoin: Extra inputs are not permitted (did you mean 'region'?)\n"
    )
