"""The loopback driver passes the conformance kit, one test per step."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

import cloudvm
from cloudvm.testing.conformance import ConformanceConfig, ConformanceSuite

from .conftest import LOOPBACK_SMALL


class TestLoopbackConformance(ConformanceSuite):
    @pytest.fixture
    def conformance_config(self, state_dir: Path, client_key: asyncssh.SSHKey) -> ConformanceConfig:
        return ConformanceConfig(
            driver="loopback",
            config={"state_dir": str(state_dir)},
            image_id=cloudvm.ImageID("local"),
            instance_type=LOOPBACK_SMALL,
            ssh_key=client_key,
            extra_command="echo hello from $(basename $PWD)",
            boot_timeout=30,
            destroy_timeout=20,
            settle_timeout=5,
            poll_interval=0.05,
            cancel_delays=(0.0, 0.01, 0.1),
        )
