"""An in-process SSH server for tests of executors and drivers."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import anyio
import anyio.to_thread
import asyncssh

from .._critical import run_critical
from .._http_server import HTTPHandler
from .._shell import ShellRunner
from .._ssh_server import InstanceSSHServer

__all__ = ["SSHTestServer"]

_START_TIMEOUT = 30.0  # seconds to bind the listener
_STOP_TIMEOUT = 5.0  # seconds for the listener, then the connections, to close


class SSHTestServer:
    """A real asyncssh server on 127.0.0.1 (a free port), in this process.

    It accepts public-key logins with ``authorized_keys`` for ``username``
    (any user when None), runs each command with ``/bin/sh -c`` in a private
    temporary directory, records every command it receives in
    :attr:`commands`, and answers direct-tcpip channels to
    169.254.169.254:80 with ``metadata`` (an HTTP handler such as
    :class:`IMDSv2Service`) when given. ``host_key`` defaults to a fresh
    Ed25519 key. Use it as an async context manager; on exit every
    connection, command and temporary file is gone.
    """

    def __init__(
        self,
        *,
        authorized_keys: Sequence[asyncssh.SSHKey] = (),
        username: str | None = None,
        host_key: asyncssh.SSHKey | None = None,
        metadata: HTTPHandler | None = None,
    ) -> None:
        self.host_key = host_key or asyncssh.generate_private_key("ssh-ed25519")
        self._authorized = list(authorized_keys)
        self._username = username
        self.metadata = metadata
        #: Every command received, in order of arrival.
        self.commands: list[str] = []
        self._connections: set[asyncssh.SSHServerConnection] = set()
        #: How many client connections were accepted in all.
        self.connection_count = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._runner: ShellRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``"127.0.0.1:<port>"`` while started."""
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now."""
        return len(self._connections)

    @property
    def workdir(self) -> Path:
        """The directory commands run in."""
        assert self._workdir is not None, "the server is not started"
        return Path(self._workdir.name)

    async def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and return the server.

        Cancel-safe under any kind of cancellation: a start that was
        cancelled leaves no listener and no temporary directory behind (it
        finishes starting, then stops again, before the cancellation is
        re-raised). A start that fails cleans up the same way.
        """
        return await run_critical(self._start, rollback=lambda _: self._stop())

    async def _start(self) -> Self:
        if self._acceptor is not None:
            raise RuntimeError("this SSHTestServer is already started")
        self._workdir = await anyio.to_thread.run_sync(
            functools.partial(tempfile.TemporaryDirectory, prefix="cloudvm-sshtest-")
        )
        try:
            self._runner = ShellRunner(Path(self._workdir.name))
            runner = self._runner

            async def record_and_run(session: asyncssh.SSHServerProcess[bytes]) -> None:
                if session.command is not None:
                    self.commands.append(session.command)
                await runner(session)

            with anyio.fail_after(_START_TIMEOUT):
                self._acceptor = await asyncssh.listen(
                    "127.0.0.1",
                    0,
                    server_host_keys=[self.host_key],
                    server_factory=self._new_server,
                    process_factory=record_and_run,
                    encoding=None,
                    allow_scp=False,
                    agent_forwarding=False,
                    x11_forwarding=False,
                )
        except BaseException:
            await self._stop()
            raise
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self

    def _new_server(self) -> InstanceSSHServer:
        return InstanceSSHServer(
            username=self._username,
            authorized_keys=self._authorized,
            metadata=self.metadata,
            on_connect=self._connected,
            on_close=self._connections.discard,
        )

    def _connected(self, conn: asyncssh.SSHServerConnection) -> None:
        self.connection_count += 1
        self._connections.add(conn)

    def drop_connections(self) -> None:
        """Abort every client connection at once, as a crashed network would."""
        for conn in list(self._connections):
            conn.abort()

    async def stop(self) -> None:
        """Close the listener and every connection, kill running commands and
        remove the work directory. It runs to its end whatever cancellation
        arrives meanwhile (then re-raises it); calling it twice is harmless."""
        await run_critical(self._stop)

    async def _stop(self) -> None:
        if self._runner is not None:
            self._runner.kill_all()
        if self._acceptor is not None:
            acceptor, self._acceptor = self._acceptor, None
            acceptor.close()
            with anyio.move_on_after(_STOP_TIMEOUT):
                await acceptor.wait_closed()
        with anyio.move_on_after(_STOP_TIMEOUT):
            for conn in list(self._connections):
                conn.close()
                await conn.wait_closed()
        self.port = 0
        if self._workdir is not None:
            workdir, self._workdir = self._workdir, None
            await anyio.to_thread.run_sync(workdir.cleanup)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
