"""The body of a loopback instance process (see ``_server.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import asyncssh

from .._imds import IMDSv2Service
from .._shell import ShellRunner
from .._ssh_server import InstanceSSHServer
from .._validate import SECRET_TAG
from . import _state

__all__ = ["main"]

_log = logging.getLogger("cloudvm.loopback.instance")

_ORPHAN_CHECK_INTERVAL = 1.0  # seconds between checks that our record still exists


async def _boot(instance_dir: Path, record: _state.InstanceRecord) -> None:
    await asyncio.sleep(record.boot_delay)
    work = instance_dir / _state.WORK
    work.mkdir(exist_ok=True)
    if record.init_command:
        # A small local file, opened once per boot in the instance process.
        with open(instance_dir / _state.INIT_LOG, "ab") as log:  # noqa: ASYNC230
            init = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                record.init_command,
                cwd=work,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            status = await init.wait()
        _log.info("init command exited with status %s", status)


async def _serve(instance_dir: Path, record: _state.InstanceRecord) -> None:
    await _boot(instance_dir, record)
    commands = ShellRunner(instance_dir / _state.WORK)

    def tags() -> dict[str, str]:
        # The secret is a tag, as the EC2 driver stores it; the rest are the
        # user's tags as of this request.
        return {**(_state.read_tags(instance_dir) or {}), SECRET_TAG: record.secret}

    metadata = IMDSv2Service(record.id, tags, record.init_command.encode())
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    authorized = (
        [asyncssh.import_public_key(record.authorized_key)] if record.authorized_key else []
    )
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        server_factory=lambda: InstanceSSHServer(
            username=record.remote_user, authorized_keys=authorized, metadata=metadata
        ),
        process_factory=commands,
        encoding=None,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        keepalive_interval=30,
    )
    port = server.sockets[0].getsockname()[1]
    _state.write_atomic(instance_dir / _state.ADDRESS, f"127.0.0.1:{port}\n", 0o644)
    _log.info("listening on 127.0.0.1:%d", port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # An instance whose record vanished (its state dir was deleted) is an
    # orphan nobody can destroy: notice and exit by ourselves.
    while not stopping.is_set() and (instance_dir / _state.RECORD).exists():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), _ORPHAN_CHECK_INTERVAL)
    server.close()
    commands.kill_all()
    await asyncio.wait_for(server.wait_closed(), 5)


def main(instance_dir_name: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    instance_dir = Path(instance_dir_name)
    lock = _state.try_lock(instance_dir / _state.LOCK)
    if lock is None:
        return 1  # another server has this instance, or it was destroyed
    record = _state.read_record(instance_dir)
    if record is None:
        return 1  # destroyed before we started
    _state.write_atomic(instance_dir / _state.PID, f"{os.getpid()}\n", 0o644)
    asyncio.run(_serve(instance_dir, record))
    # The lock stays held until the kernel closes it at exit: whoever waits for
    # it (destroy) knows that this process is really gone.
    return 0
