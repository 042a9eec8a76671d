"""Case 1: command latency on an open connection to a real OpenSSH sshd."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import asyncssh
from _sshd import RunningSSHD, running_sshd
from _stats import CaseResult, Probe, Row, interleaved
from _targets import KnownKeyTarget

import cloudvm

__all__ = ["run"]

NAME = "latency"
CLOUDVM = "cloudvm SSHExecutor.execute"
ASYNCSSH = "asyncssh conn.run"
OPENSSH = "OpenSSH ControlMaster"
COMMAND = "true"


def _ssh_base(sshd: RunningSSHD, key_file: Path, control: Path) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-i",
        str(key_file),
        "-S",
        str(control),
        "-p",
        str(sshd.port),
        "-l",
        sshd.user,
    ]


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "Command latency on an open connection (real OpenSSH sshd)")
    if not await anyio.Path("/usr/sbin/sshd").exists():
        result.skipped = "skipped: OpenSSH sshd is not installed (apt-get install openssh-server)"
        return result
    commands = 3 if quick else 50  # per run; a sample is their mean latency
    repeats = 1 if quick else 7
    key = asyncssh.generate_private_key("ssh-ed25519")
    workdir = Path(tempfile.mkdtemp(prefix="cloudvm-bench-ssh-"))
    try:
        key_file = workdir / "id_ed25519"
        key.write_private_key(key_file)
        os.chmod(key_file, 0o600)
        with running_sshd(key) as sshd:
            target = KnownKeyTarget(sshd.address, sshd.user, sshd.host_key)
            executor = cloudvm.SSHExecutor(target, signers=[key])
            conn = await asyncssh.connect(
                "127.0.0.1",
                sshd.port,
                username=sshd.user,
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
                config=None,
            )
            probes: dict[str, Probe] = {
                CLOUDVM: lambda: _mean(commands, lambda: executor.execute(COMMAND)),
                ASYNCSSH: lambda: _mean(commands, lambda: conn.run(COMMAND, check=True)),
            }
            control = workdir / "control"
            base = _ssh_base(sshd, key_file, control)
            master_started = False
            if shutil.which("ssh") is None:
                result.notes.append("OpenSSH client (ssh) not installed: its row is missing")
            else:
                # In a thread: with -f the master detaches once logged in.
                await anyio.to_thread.run_sync(
                    _quiet, [*base, "-M", "-o", "ControlPersist=yes", "-f", "-N", "127.0.0.1"]
                )
                master_started = True
                one = [*base, "-o", "ControlMaster=no", "127.0.0.1", COMMAND]
                probes[OPENSSH] = lambda: _mean(
                    commands, lambda: anyio.run_process(one, check=True)
                )
            try:
                samples = await interleaved(probes, repeats=repeats, warmup=1)
            finally:
                if master_started:
                    await anyio.to_thread.run_sync(_quiet, [*base, "-O", "exit", "127.0.0.1"])
                conn.close()
                await conn.wait_closed()
                await executor.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for variant, values in samples.items():
        result.rows.append(
            Row(
                NAME,
                variant,
                "ms/command",
                [v * 1000 for v in values],
                ratio_to=(ASYNCSSH, OPENSSH) if variant == CLOUDVM else None,
            )
        )
    result.notes.append(
        f"each sample: mean of {commands} sequential `{COMMAND}` on one open connection; "
        f"login user {sshd.user!r} (shell /bin/sh)"
    )
    return result


def _quiet(command: list[str]) -> None:
    subprocess.run(
        command,
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _mean(count: int, call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await call()
    return (time.perf_counter() - start) / count
