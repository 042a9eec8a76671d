"""Fixtures: clean environment, leak checks, SSH keys and servers."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest
from blockbuster import blockbuster_ctx

from cloudvm.testing import SSHTestServer

from .support import open_sockets, wait_until

SSHD = "/usr/sbin/sshd"
SSHD_USER = "cloudvm-test"  # used when the suite runs as root


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's cloud credentials or SSH agent never reach a test."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_", "AZURE_", "CLOUDSDK_")) or name == "SSH_AUTH_SOCK":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Any blocking call (file, socket, sleep) made by cloudvm's own code on the
    event loop fails the test; worker threads may block."""
    with blockbuster_ctx("cloudvm") as bb:
        # Finding a driver reads installed package metadata, like an import
        # does: load_driver is synchronous by contract.
        for function in bb.functions.values():
            function.can_block_in("cloudvm/_drivers.py", {"load_driver", "available_drivers"})
        yield


@pytest.fixture(autouse=True)
async def no_leaked_sockets() -> AsyncIterator[None]:
    """Every connection a test opens is closed by the time it ends."""
    before = open_sockets()
    yield
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: open_sockets() <= before)
    assert open_sockets() <= before, "the test left sockets open"


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def ssh_server(client_key: asyncssh.SSHKey) -> AsyncIterator[SSHTestServer]:
    async with SSHTestServer(authorized_keys=[client_key]) as server:
        yield server


class OpenSSHServer:
    """A real OpenSSH sshd on a free loopback port, with its own config."""

    def __init__(self, root: Path, user: str, host_key: asyncssh.SSHKey, port: int) -> None:
        self.root = root
        self.user = user
        self.host_key = host_key
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes: every descendant of the listener
        (the privileged monitor and the unprivileged child holding the socket)."""
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found


def _sshd_user() -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(SSHD_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", SSHD_USER], check=True)
    # With PAM off, sshd refuses accounts whose password is locked ("!").
    subprocess.run(["usermod", "-p", "*", SSHD_USER], check=True)
    return SSHD_USER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def openssh_server(client_key: asyncssh.SSHKey) -> Iterator[OpenSSHServer]:
    if not os.path.exists(SSHD):
        if os.environ.get("CLOUDVM_REQUIRE_SSHD"):
            pytest.fail(f"{SSHD} is required (CLOUDVM_REQUIRE_SSHD is set) but missing")
        pytest.skip("OpenSSH sshd is not installed")
    user = _sshd_user()
    root = Path(tempfile.mkdtemp(prefix="cloudvm-sshd-"))
    os.chmod(root, 0o755)  # sshd reads authorized_keys as the login user
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(root / "host_key")
    os.chmod(root / "host_key", 0o600)
    client_key.convert_to_public().write_public_key(root / "authorized_keys")
    os.chmod(root / "authorized_keys", 0o644)
    port = _free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "MaxStartups 200:30:300\nMaxSessions 10\nAllowTcpForwarding local\n"
        "PrintMotd no\nAcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    server = OpenSSHServer(root, user, host_key, port)
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - closed at teardown
    server.process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()}")
                time.sleep(0.05)
        yield server
    finally:
        server.process.terminate()
        server.process.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
