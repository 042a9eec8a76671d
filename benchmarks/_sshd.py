"""A real OpenSSH sshd for the latency case, started and stopped by the bench.

The same recipe as the test suite's fixture (REFERENCE.md section 5): its own
config on a free loopback port, no PAM, and, when we are root, a dedicated
user whose login shell is /bin/sh (root's rc files cost ~100 ms a command).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh

__all__ = ["SSHD", "RunningSSHD", "running_sshd"]

SSHD = "/usr/sbin/sshd"
BENCH_USER = "cloudvm-bench"  # used when the bench runs as root
_START_TIMEOUT = 10.0  # seconds


class RunningSSHD:
    """Where the sshd listens and how to log in to it."""

    def __init__(self, root: Path, user: str, port: int, host_key: asyncssh.SSHKey) -> None:
        self.root = root
        self.user = user
        self.port = port
        self.host_key = host_key

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file holding the server's key, for the OpenSSH client."""
        return self.root / "known_hosts"


def _login_user() -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(BENCH_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", BENCH_USER], check=True)
    # With PAM off, sshd refuses accounts whose password is locked ("!").
    subprocess.run(["usermod", "-p", "*", BENCH_USER], check=True)
    return BENCH_USER


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_sshd(client_key: asyncssh.SSHKey, *, max_sessions: int = 100) -> Iterator[RunningSSHD]:
    """Start sshd accepting ``client_key``; stop it and remove its files on exit.

    Raises:
        FileNotFoundError: sshd is not installed.
        RuntimeError: sshd did not start (its log is in the message).
    """
    if not os.path.exists(SSHD):
        raise FileNotFoundError(f"{SSHD} is not installed (apt-get install openssh-server)")
    user = _login_user()
    root = Path(tempfile.mkdtemp(prefix="cloudvm-bench-sshd-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(root, 0o755)  # sshd reads authorized_keys as the login user
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(root / "host_key")
        os.chmod(root / "host_key", 0o600)
        client_key.convert_to_public().write_public_key(root / "authorized_keys")
        os.chmod(root / "authorized_keys", 0o644)
        port = _free_port()
        public = host_key.export_public_key().decode().strip()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {public}\n")
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"MaxStartups 200:30:300\nMaxSessions {max_sessions}\nAllowTcpForwarding local\n"
            "PrintMotd no\nPrintLastLog no\n"
        )
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        with open(root / "sshd.log", "wb") as log:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (root / "sshd.log").read_text(errors="replace")
                    raise RuntimeError(f"sshd did not start: {log_text}") from None
                time.sleep(0.05)
        yield RunningSSHD(root, user, port, host_key)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)
