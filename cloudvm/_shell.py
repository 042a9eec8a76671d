"""Running SSH session commands with /bin/sh, for loopback and test servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import asyncssh

from ._critical import run_critical

__all__ = ["ShellRunner", "run_script"]

_READ_SIZE = 65536


class ShellRunner:
    """An asyncssh ``process_factory`` that runs each session's command with
    ``/bin/sh -c`` in ``work_dir``, pumping stdin, stdout and stderr by hand
    (asyncssh's ``redirect`` onto subprocess pipes can lose output). The exit
    status (or signal) goes back to the client; a command whose channel closes
    early is killed with its whole process group."""

    def __init__(self, work_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self._work_dir = work_dir
        self._env = dict(os.environ if env is None else env)
        self.running: set[asyncio.subprocess.Process] = set()

    async def __call__(self, session: asyncssh.SSHServerProcess[bytes]) -> None:
        command = session.command
        if command is None:
            session.stderr.write(b"this host runs commands only, not interactive shells\n")
            session.exit(1)
            return
        env = dict(self._env)
        env.update({_text(k): _text(v) for k, v in session.env.items()})
        env["PWD"] = str(self._work_dir)
        transport, proc = await _spawn(command, cwd=self._work_dir, env=env)
        self.running.add(proc)
        try:
            async with asyncio.TaskGroup() as tg:
                feeder = tg.create_task(_pump_stdin(session, proc))
                tg.create_task(_pump_out(proc.stdout, session.stdout))
                tg.create_task(_pump_out(proc.stderr, session.stderr))
                watcher = tg.create_task(_kill_when_closed(session, proc))
                await proc.wait()
                # As sshd does, the session ends when the command exits, whether
                # or not the client ever closes its input; output still drains.
                feeder.cancel()
                watcher.cancel()
        except* (OSError, asyncssh.Error):
            pass  # the client went away; the command is killed below
        finally:
            self.running.discard(proc)
            kill_group(proc)
            # Output pipes nobody read to the end (the client left, output hit
            # a limit, or we were cancelled) stay open, paused, and the wait
            # below would never end: close them all first.
            transport.close()
            await proc.wait()
        status = proc.returncode if proc.returncode is not None else -1
        with contextlib.suppress(OSError, asyncssh.Error):
            if status < 0:
                session.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
            else:
                session.exit(status)

    def kill_all(self) -> None:
        """Kill every running command (when the server stops)."""
        for proc in list(self.running):
            kill_group(proc)


async def run_script(script: str, cwd: Path, *, keep: int = 500) -> tuple[int, bytes]:
    """Run ``script`` with ``/bin/sh -c`` in ``cwd``, in a process group of
    its own, with no input; return its exit status (negative: killed by that
    signal) and the last ``keep`` bytes of its output (stdout, then stderr).

    Cancelled (by any means), it kills the whole group and closes the pipes
    before the cancellation goes on, so no command and no pipe outlives it
    (a plain subprocess would leave a grandchild such as ``sleep`` holding
    its pipe open, unclosed until the loop is gone).
    """
    # The start is critical: cancelled half way, asyncio would kill the shell
    # but not its group, and a grandchild would keep running.
    transport, proc = await run_critical(
        lambda: _spawn(script, cwd=cwd, env=os.environ), rollback=_end
    )
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        stdout, stderr = await proc.communicate()
        return proc.returncode if proc.returncode is not None else -1, (stdout + stderr)[-keep:]
    finally:
        await _end((transport, proc))


async def _end(spawned: tuple[asyncio.SubprocessTransport, asyncio.subprocess.Process]) -> None:
    """Kill a spawned command's whole group and close its pipes."""
    transport, proc = spawned
    kill_group(proc)
    transport.close()


async def _spawn(
    command: str, *, cwd: Path, env: Mapping[str, str]
) -> tuple[asyncio.SubprocessTransport, asyncio.subprocess.Process]:
    # asyncio.create_subprocess_exec, keeping the transport: a Process cannot
    # close its pipes, and an unread one would outlive the command.
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=2**16, loop=loop),
        "/bin/sh",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return transport, asyncio.subprocess.Process(transport, protocol, loop)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def _pump_stdin(
    session: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
) -> None:
    assert proc.stdin is not None
    try:
        while data := await session.stdin.read(_READ_SIZE):
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading its input
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


async def _pump_out(source: asyncio.StreamReader | None, sink: asyncssh.SSHWriter[bytes]) -> None:
    assert source is not None
    while data := await source.read(_READ_SIZE):
        sink.write(data)
        await sink.drain()


async def _kill_when_closed(
    session: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
) -> None:
    await session.channel.wait_closed()
    kill_group(proc)


def kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
