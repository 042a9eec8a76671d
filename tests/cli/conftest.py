"""CLI fixtures: run the real command in a subprocess against a private
loopback cloud that must be empty (no instance, no process) at the end."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncssh
import pytest

from ..support import processes_mentioning, wait_until


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class Cloud:
    """A loopback cloud for the command: its state dir and config file."""

    state_dir: Path
    config: Path
    key: Path  # a private key; its public half is key.pub

    def args(self) -> list[str]:
        return ["--driver", "loopback", "--config", str(self.config)]

    def instance_dirs(self) -> list[str]:
        root = self.state_dir / "instances"
        return sorted(p.name for p in root.glob("*")) if root.exists() else []


async def cloudvm(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Result:
    """Run ``python -m cloudvm ARGS`` and return its exit status and output."""
    proc = await anyio.run_process(
        [sys.executable, "-m", "cloudvm", *args],
        input=stdin,
        check=False,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    state = tmp_path / "cloud"
    config = tmp_path / "loopback.json"
    config.write_text(json.dumps({"state_dir": str(state)}))
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / "key")
    key.write_public_key(tmp_path / "key.pub")
    made = Cloud(state, config, tmp_path / "key")
    yield made
    leftovers = made.instance_dirs()
    for pid in processes_mentioning(str(state)):
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not processes_mentioning(str(state)))
    assert leftovers == [], "the test left loopback instances behind"
