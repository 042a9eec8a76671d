"""Text the command did not choose (tags another user of the account wrote,
an unproven server's words, the user's own arguments) reaches the terminal
only escaped, and the hints it prints are safe to paste into a shell."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncssh
import pytest

from .conftest import Cloud, Result, cloudvm

TYPE = ["--type", "loopback.small", "--image", "local"]
OSC_TITLE = "\x1b]0;x\x07"  # sets the terminal's title
C1_CSI = "\x9b2J"  # clears the screen on terminals that honour 8-bit controls
CONTROLS = ("\x1b", "\x07", "\x9b")


def assert_no_controls(result: Result) -> None:
    for text in (result.stdout, result.stderr):
        for ch in CONTROLS:
            assert ch not in text, repr(text)


async def test_list_escapes_hostile_tags_and_json_keeps_them(cloud: Cloud) -> None:
    created = await cloudvm("create", *cloud.args(), *TYPE, "--tag", "role=web")
    instance_id = created.stdout.split()[0]
    try:
        # Another user of the account tagged the instance.
        hostile = {"role": "web", "title": OSC_TITLE, "csi": C1_CSI, "cmd": "$(touch /tmp/p)"}
        tags_file = cloud.state_dir / "instances" / instance_id / "tags.json"
        tags_file.write_text(json.dumps(hostile))

        table = await cloudvm("list", *cloud.args())
        assert table.code == 0, table.stderr
        assert_no_controls(table)
        [row] = table.stdout.splitlines()[1:]
        assert "cmd=$(touch /tmp/p),csi=\\x9b2J,role=web,title=\\x1b]0;x\\x07" in row

        listed = await cloudvm("list", *cloud.args(), "--json")
        assert listed.code == 0
        assert_no_controls(listed)
        [entry] = json.loads(listed.stdout)
        assert entry["tags"] == hostile
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


async def test_errors_escape_what_the_user_typed(cloud: Cloud) -> None:
    result = await cloudvm("destroy", *cloud.args(), f"lb-{OSC_TITLE}")
    assert result.code == 1
    assert_no_controls(result)
    assert result.stderr == "cloudvm: error: no instance lb-\\x1b]0;x\\x07 in set cloudvm-cli\n"


async def test_check_with_hint_is_a_quoted_complete_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "full config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "full"), "max_instances": 0}))
    planted = tmp_path / "planted"
    tag = f"job=$(touch {planted})"
    result = await cloudvm(
        "create", "--driver", "loopback", "--config", str(config), "--set-id", "ci runs",
        *TYPE, "--tag", tag, "--tag", "n=1",
    )  # fmt: skip
    assert result.code == 3
    [hint] = [line for line in result.stderr.splitlines() if "check with: " in line]
    command = hint.split("check with: ", 1)[1]
    assert shlex.split(command) == [
        "cloudvm", "list", "--driver", "loopback", "--config", str(config),
        "--set-id", "ci runs", "--tag", tag, "--tag", "n=1",
    ]  # fmt: skip
    # Pasted into a shell, it lists (nothing) and runs nothing else.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    pasted = await cloudvm_in_shell(command)
    assert pasted.code == 0, pasted.stderr
    assert pasted.stderr == f"no instances in set ci runs with tags {tag} n=1\n"
    assert not planted.exists()


async def cloudvm_in_shell(command: str) -> Result:
    proc = await anyio.run_process(["/bin/sh", "-c", command], check=False)
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class _Impostor(asyncssh.SSHServer):
    """A server that lets us log in and then refuses the metadata channel
    with words of its own choosing."""

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"no{OSC_TITLE}{C1_CSI}pe"
        )


@pytest.fixture
async def impostor(cloud: Cloud) -> AsyncIterator[str]:
    client_key = asyncssh.read_public_key(f"{cloud.key}.pub")
    server = await asyncssh.create_server(
        _Impostor,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_host_key_errors_escape_the_servers_words(cloud: Cloud, impostor: str) -> None:
    created = await cloudvm(
        "create", *cloud.args(), *TYPE, "--public-key", f"{cloud.key}.pub", "--wait"
    )
    instance_id = created.stdout.split()[0]
    try:
        # The instance's address now leads to another machine.
        (cloud.state_dir / "instances" / instance_id / "address").write_text(impostor)
        result = await cloudvm("exec", *cloud.args(), "--key", str(cloud.key), instance_id, "true")
        assert result.code == 4, result.stderr
        assert_no_controls(result)
        assert result.stderr.startswith("cloudvm: error: host key: ")
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0


def test_log_lines_escape_what_they_quote() -> None:
    from cloudvm._cli import _log_handler

    record = logging.LogRecord(
        "cloudvm.x", logging.WARNING, __file__, 1, "server said %s", (OSC_TITLE,), None
    )
    line = _log_handler().format(record)
    assert line == "cloudvm: WARNING: cloudvm.x: server said \\x1b]0;x\\x07"
