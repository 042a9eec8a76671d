"""What the command says when something goes wrong: the exact messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncssh
import pytest

from ..support import processes_mentioning, wait_until
from .conftest import Cloud, cloudvm

TYPE = ["--type", "loopback.small", "--image", "local"]


def loopback_config(cloud: Cloud, name: str, **keys: object) -> Path:
    """Another config file for the same loopback cloud, with more keys."""
    path = cloud.config.with_name(name)
    path.write_text(json.dumps({"state_dir": str(cloud.state_dir), **keys}))
    return path


async def create(config: Path, *extra: str) -> str:
    result = await cloudvm("create", "--driver", "loopback", "--config", str(config), *TYPE, *extra)
    assert result.code == 0, result.stderr
    return result.stdout.split()[0]


async def test_a_refused_key_names_the_remote_user(cloud: Cloud, tmp_path: Path) -> None:
    config = loopback_config(cloud, "deploy.json", remote_user="deploy")
    instance_id = await create(config, "--public-key", f"{cloud.key}.pub", "--wait")
    try:
        other = tmp_path / "other-key"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(other)
        run = await cloudvm(
            "exec", "--driver", "loopback", "--config", str(config), "--key", str(other),
            instance_id, "--", "true",
        )  # fmt: skip
        assert run.code == 1
        assert run.stderr == f"cloudvm: error: the host refused the key for user deploy ({other})\n"
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


async def test_a_command_timeout_says_the_command_was_stopped(cloud: Cloud) -> None:
    instance_id = await create(cloud.config, "--public-key", f"{cloud.key}.pub", "--wait")
    try:
        run = await cloudvm(
            "exec", *cloud.args(), "--key", str(cloud.key), "--timeout", "1",
            instance_id, "--", "sleep 47.25",
        )  # fmt: skip
        assert run.code == 1
        assert run.stderr == (
            "cloudvm: error: the command did not finish within 1 s (it was stopped)\n"
        )
        # ... and it really was stopped.
        await wait_until(lambda: not processes_mentioning("sleep 47.25"), timeout=60)
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


async def test_list_with_no_match_says_so_on_stderr_only(cloud: Cloud) -> None:
    result = await cloudvm("list", *cloud.args())
    assert (result.code, result.stdout) == (0, "")
    assert result.stderr == "no instances in set cloudvm-cli\n"
    result = await cloudvm("list", *cloud.args(), "--tag", "role=x", "--tag", "n=1")
    assert (result.code, result.stdout) == (0, "")
    assert result.stderr == "no instances in set cloudvm-cli with tags n=1 role=x\n"
    result = await cloudvm("list", *cloud.args(), "--json")
    assert (result.code, result.stdout, result.stderr) == (0, "[]\n", "")


async def test_one_instance_is_not_instances(cloud: Cloud) -> None:
    instance_id = await create(cloud.config, "--tag", "batch=1")
    try:
        result = await cloudvm("destroy", *cloud.args(), "--all-with-tag", "batch=1")
        assert result.code == 2
        assert f"destroy 1 instance with tags batch=1 ({instance_id})?" in result.stderr
        assert "1 instances" not in result.stderr
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


async def test_exec_joins_its_arguments_with_spaces_as_documented(cloud: Cloud) -> None:
    result = await cloudvm("exec", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "joined with spaces into one command line (as OpenSSH's ssh does)" in text
    instance_id = await create(cloud.config, "--public-key", f"{cloud.key}.pub", "--wait")
    try:
        exec_args = ["exec", *cloud.args(), "--key", str(cloud.key), instance_id, "--"]
        joined = await cloudvm(*exec_args, "echo", "a  b")  # the shell sees: echo a  b
        assert (joined.code, joined.stdout) == (0, "a b\n")
        quoted = await cloudvm(*exec_args, "echo 'a  b'")
        assert (quoted.code, quoted.stdout) == (0, "a  b\n")
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


def render(screen_bytes: bytes) -> list[str]:
    """The lines a terminal shows after these bytes: a carriage return moves
    to the line's start, later text overwrites what was there."""
    lines: list[list[str]] = [[]]
    column = 0
    for ch in screen_bytes.decode():
        if ch == "\r":
            column = 0
        elif ch == "\n":
            lines.append([])
            column = 0
        else:
            line = lines[-1]
            if column < len(line):
                line[column] = ch
            else:
                line.append(ch)
            column += 1
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_create_wait_on_a_terminal_clears_the_progress_line(cloud: Cloud) -> None:
    config = loopback_config(cloud, "slow.json", boot_delay=3.0)
    master, slave = os.openpty()
    try:
        with anyio.fail_after(60):
            proc = await anyio.run_process(
                [sys.executable, "-m", "cloudvm", "create", "--driver", "loopback",
                 "--config", str(config), *TYPE, "--wait"],
                stderr=slave,
                check=False,
            )  # fmt: skip
        os.close(slave)
        slave = -1
        screen = await anyio.to_thread.run_sync(_read_all, master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, screen
    instance_id = proc.stdout.decode().split()[0]
    try:
        assert b"to boot ... " in screen  # the progress line was shown
        [line] = render(screen)
        assert line.startswith("waited ") and line.endswith(f" s for {instance_id}"), line
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


@pytest.fixture
def sigint_reaches_children() -> Iterator[None]:
    """A child starts with SIGINT at its default, so that Python gives it
    the usual Ctrl-C handling: a suite started in the background by a
    non-interactive shell has SIGINT ignored, and a child inherits an
    ignored signal (never a handler) across exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_reaches_children")
async def test_interrupted_create_wait_says_the_instance_is_booting(cloud: Cloud) -> None:
    config = loopback_config(cloud, "never.json", boot_delay=600.0)
    args = ["--driver", "loopback", "--config", str(config)]
    async with await anyio.open_process(
        [sys.executable, "-m", "cloudvm", "create", *args, *TYPE, "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        seen = b""
        try:
            with anyio.fail_after(60):
                while b"to boot" not in seen:
                    seen += await proc.stderr.receive()
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                async for chunk in proc.stderr:
                    seen += chunk
                code = await proc.wait()
        except BaseException as exc:
            # Leaving ``async with`` waits for the process: never for a hung one.
            if proc.returncode is None:
                proc.kill()
            exc.add_note(f"the CLI wrote: {seen.decode(errors='replace')!r}")
            raise
    stderr = seen.decode()
    [instance_id] = cloud.instance_dirs()
    try:
        assert code == 130
        assert stderr.splitlines()[-1] == (
            f"cloudvm: error: interrupted: {instance_id} exists and is still booting; "
            f"destroy it with: cloudvm destroy --driver loopback --config {config} "
            f"--set-id cloudvm-cli {instance_id}"
        )
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0
