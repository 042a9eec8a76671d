"""SSHExecutor: run commands on an ExecutorTarget over one verified connection."""

from __future__ import annotations

import enum
import logging
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, cast

import anyio
import asyncssh

from ._errors import ExecuteError, HostKeyError, OutputLimitError
from ._protocols import ExecutorTarget
from ._text import printable
from ._tunnel import escape_reason

__all__ = ["SSHExecutor", "split_address"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Errors that mean the connection itself is gone, as opposed to the server
# refusing one session on a healthy connection.
_CONNECTION_GONE = (
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    BrokenPipeError,
    ConnectionError,
)


# Ciphers in order of preference. AES-GCM first: with AES-NI it is the
# cheapest for asyncssh (one OpenSSL AEAD call per packet, no separate MAC;
# about a fifth less client CPU per connect-and-run than chacha20-poly1305,
# asyncssh's first choice) and as strong; the rest of asyncssh's default list
# follows for servers without it.
_ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
# Seconds to keep retrying a session the server refused on a live connection.
_SESSION_RETRY_WINDOW = 3.0
#: The default cap on a command's output (stdout and stderr together), in bytes.
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
_READ_SIZE = 65536
# Longest error message built from text a host or driver chose.
_MESSAGE_LIMIT = 500


class _Default(enum.Enum):
    """``DEFAULT`` means "use the executor's setting"; ``None`` means "no limit"."""

    DEFAULT = "DEFAULT"


DEFAULT: Final = _Default.DEFAULT


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """Split ``"host"``, ``"host:port"``, ``"[v6]:port"`` or a bare IPv6 address
    into host and port. Raises ValueError for an empty or malformed address."""
    if not address:
        raise ValueError("the target has no address yet (it may still be booting); re-list it")
    host, port = address, default_port
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"malformed address {address!r}: missing ']'")
        host, rest = address[1:end], address[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"malformed address {address!r}")
            port = _parse_port(rest[1:], address)
    elif address.count(":") == 1:
        host, port_text = address.split(":")
        port = _parse_port(port_text, address)
    if not host:
        raise ValueError(f"malformed address {address!r}: no host")
    return host, port


def _parse_port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"malformed address {address!r}: bad port {text!r}")
    return int(text)


def _env_preamble(env: Mapping[str, str]) -> bytes:
    """The line written on stdin ahead of the caller's input when ``env`` is
    given: an ``export`` statement for the POSIX shell, every byte of it
    written as a ``printf %b`` octal escape (``\\0ooo``), so the line holds
    no newline and shows no value in clear."""
    parts = []
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"env: {name!r} is not a valid environment variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"env[{name!r}] must be a string without NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"env[{name!r}] cannot be encoded as UTF-8") from None
        parts.append(f"{name}={shlex.quote(value)}")
    script = f"export {' '.join(parts)}".encode()
    return "".join(f"\\0{byte:03o}" for byte in script).encode("ascii") + b"\n"


# Put before the caller's command when there is an env preamble. sshd passes
# the "env" request on only for the names its AcceptEnv lists (by default
# none), and values exported in the command string would show in logs (asyncssh
# logs the command) and in the host's process list. So the shell reads the
# preamble line from stdin with ``read`` (which takes exactly one line from a
# pipe, leaving the rest of stdin to the command), decodes it with the printf
# builtin and evaluates it. Only builtins: it works with any POSIX shell.
_ENV_PROLOGUE = (
    'IFS= read -r _cloudvm_env && eval "$(printf %b "$_cloudvm_env")" && unset _cloudvm_env'
    ' || { echo "cloudvm: cannot read the environment from stdin" >&2; exit 125; }\n'
)


def _check_max_output(max_output: int | None) -> None:
    if max_output is not None and (
        not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1
    ):
        raise ValueError(
            f"max_output must be a positive number of bytes or None, got {max_output!r}"
        )


async def _read_output(
    process: asyncssh.SSHClientProcess[bytes], cmd: str, cap: int | None
) -> tuple[bytes, bytes]:
    """Read stdout and stderr to their end (both at once, so that neither
    can fill the channel's window while we wait on the other), then wait for
    the exit status. Raise OutputLimitError as soon as more than ``cap``
    bytes came, keeping exactly ``cap`` of them."""
    buffers = (bytearray(), bytearray())
    room = cap
    over = False

    async def pump(reader: asyncssh.SSHReader[bytes], buffer: bytearray) -> None:
        nonlocal room, over
        while chunk := await reader.read(_READ_SIZE):
            if room is not None:
                if len(chunk) > room:
                    buffer += chunk[:room]
                    room, over = 0, True
                    group.cancel_scope.cancel()
                    return
                room -= len(chunk)
            buffer += chunk

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(pump, process.stderr, buffers[1])
            await pump(process.stdout, buffers[0])
    except BaseExceptionGroup as errors:
        # A reader failed (both do when the connection is lost): raise the
        # first error itself, as a caller of execute expects it.
        raise errors.exceptions[0] from None
    stdout, stderr = bytes(buffers[0]), bytes(buffers[1])
    if over:
        raise OutputLimitError(
            f"remote command wrote more than {cap} bytes of output (max_output); "
            f"it was ended: {cmd[:80]!r}",
            limit=cap or 0,
            stdout=stdout,
            stderr=stderr,
        )
    await process.wait_closed()
    return stdout, stderr


def _escaped(exc: HostKeyError) -> HostKeyError:
    # A verifier's message may quote the host (a refusal reason, a body):
    # escape it in place, so that neither str() nor a traceback carries it raw.
    text = printable(exc.message, limit=_MESSAGE_LIMIT)
    if text != exc.message:
        exc.message = text
        exc.args = (text,)
    return exc


class _State(enum.Enum):
    OPEN = "open"  # usable
    CLOSED = "closed"  # close() was called; execute() raises RuntimeError


class _Attempt:
    """One connection attempt that concurrent callers for ``target`` share."""

    def __init__(self, target: ExecutorTarget) -> None:
        self.target = target
        self.done = anyio.Event()
        self.error: BaseException | None = None


class _Live:
    """A connection whose host key has passed verification."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, address: str, target: ExecutorTarget
    ) -> None:
        self.conn = conn
        self.address = address
        self.target = target


class SSHExecutor:
    """Runs commands on an :class:`~cloudvm.ExecutorTarget` over asyncssh.

    It keeps one multiplexed connection per target: concurrent ``execute``
    calls share it (at most ``max_sessions`` sessions at once, sshd's default
    ``MaxSessions`` being 10), and concurrent callers that find no connection
    share one connection attempt. When it connects it accepts whatever host key
    the server offers and then, before any command runs, awaits
    ``target.verify_host_key(key, conn)``, within ``verify_timeout``. Every
    new connection is verified, whatever key it presents: a key that passed
    once earns no trust later (an address can be reused by another instance
    built from the same image). Only ``None`` returned is a pass; any other
    value, any exception and the timeout close the connection and raise
    HostKeyError, and no command runs. A verification counts only for the
    target it was made for: after ``set_target`` its result is discarded.

    Args:
        target: the first target, or None to set one later.
        signers: private keys to log in with. No keys from ``~/.ssh``, no agent
            and no ``~/.ssh/config`` are ever used: the executor's behaviour
            depends only on its arguments.
        port: the port used when the target's address has none.
        connect_timeout: seconds allowed for TCP connect, SSH handshake and
            login together.
        login_timeout: seconds allowed for authentication once connected.
        verify_timeout: seconds allowed for ``verify_host_key``.
        keepalive_interval: seconds of silence before a keepalive is sent;
            ``keepalive_count_max`` unanswered ones drop the connection.
        command_timeout: default seconds one command may run (None: no limit).
        max_output: default cap, in bytes, on what one command may write to
            stdout and stderr together (None: no limit). A command that
            writes more is ended and OutputLimitError raised.
        max_sessions: commands in flight on the connection at once.
        trust_on_first_use: when the target raises NotImplementedError (it has
            no way to verify), accept the first key it presents and refuse any
            other key for that target later; the only case where a key is
            remembered. Off by default: such a key is refused.
        logger: where connection events are logged (never secrets).
    """

    def __init__(
        self,
        target: ExecutorTarget | None = None,
        *,
        signers: Sequence[asyncssh.SSHKey] = (),
        port: int = 22,
        connect_timeout: float = 30.0,
        login_timeout: float = 30.0,
        verify_timeout: float = 30.0,
        keepalive_interval: float = 15.0,
        keepalive_count_max: int = 3,
        command_timeout: float | None = 3600.0,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        max_sessions: int = 10,
        trust_on_first_use: bool = False,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("login_timeout", login_timeout),
            ("verify_timeout", verify_timeout),
            ("keepalive_interval", keepalive_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if command_timeout is not None and not command_timeout > 0:
            raise ValueError(f"command_timeout must be positive or None, got {command_timeout!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port!r}")
        if keepalive_count_max < 1:
            raise ValueError(f"keepalive_count_max must be at least 1, got {keepalive_count_max!r}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions!r}")
        _check_max_output(max_output)
        self._target = target
        self._signers = list(signers)
        self._port = port
        self._connect_timeout = connect_timeout
        self._login_timeout = login_timeout
        self._verify_timeout = verify_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_count_max = keepalive_count_max
        self._command_timeout = command_timeout
        self._max_output = max_output
        self._trust_on_first_use = trust_on_first_use
        self._logger = logger or logging.getLogger("cloudvm.executor")
        self._sessions = anyio.Semaphore(max_sessions)
        self._state = _State.OPEN
        self._live: _Live | None = None
        self._attempt: _Attempt | None = None
        # trust_on_first_use only: the target and the first key it was trusted with.
        self._first_key: tuple[ExecutorTarget, bytes] | None = None
        # Connections we closed but whose close has not been awaited yet.
        self._closing: list[asyncssh.SSHClientConnection] = []

    # -- configuration -------------------------------------------------------

    def set_signers(self, *keys: asyncssh.SSHKey) -> None:
        """Log in with ``keys`` from the next connection on (the current one stays)."""
        self._signers = list(keys)

    def set_target(self, target: ExecutorTarget) -> None:
        """Run later commands on ``target``. A different target closes the
        current connection and forgets the key trusted on first use; a
        verification still running for the old target counts for nothing
        (its connection is closed when it ends)."""
        if target is self._target:
            return
        self._target = target
        self._first_key = None
        self._discard_live()

    @property
    def target(self) -> ExecutorTarget | None:
        """The current target, or None before one is set."""
        return self._target

    @property
    def max_output(self) -> int | None:
        """The default cap on one command's output, in bytes (None: no limit)."""
        return self._max_output

    # -- running commands ----------------------------------------------------

    async def execute(
        self,
        cmd: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,
        max_output: int | _Default | None = DEFAULT,
    ) -> tuple[bytes, bytes]:
        """Run ``cmd`` through the remote user's shell; return ``(stdout, stderr)``.

        ``stdin`` is written to the command and then closed (None: closed at
        once). ``env`` is set for this command only; its values never appear
        in the command line or in any log: they travel as one encoded line on
        stdin that the shell reads and decodes before running ``cmd``, which
        then reads ``stdin`` exactly as given. ``timeout`` overrides the
        executor's ``command_timeout`` (None: no limit); when it expires the
        session is closed and TimeoutError raised. ``max_output`` overrides
        the executor's cap on stdout and stderr together (bytes; None: no
        limit); a command writing more is ended (its session closed) and
        OutputLimitError raised with the output read up to the cap.

        If the connection turns out to be gone before the command starts, the
        executor reconnects once. A connection lost while the command runs is
        not retried, since the command may have had effects.

        Raises:
            OutputLimitError: the command wrote more than ``max_output`` bytes.
            ExecuteError: the command exited non-zero (carries exit status and output).
            HostKeyError: the server could not be proven to be the target.
            TimeoutError: connecting, logging in, verifying or the command took too long.
            ValueError: the target has no address yet, or ``env`` or
                ``max_output`` is malformed.
            OSError / asyncssh.Error: the server could not be reached or refused us.
            RuntimeError: the executor is closed or has no target.
        """
        preamble = _env_preamble(env) if env else b""
        full_cmd = _ENV_PROLOGUE + cmd if env else cmd
        limit = self._command_timeout if timeout is DEFAULT else timeout
        cap = self._max_output if max_output is DEFAULT else max_output
        _check_max_output(cap)
        for attempt in range(2):
            conn = await self._connection()
            async with self._sessions:
                try:
                    process = await self._open_session(conn, full_cmd)
                except (*_CONNECTION_GONE, asyncssh.ChannelOpenError) as exc:
                    if not conn.is_closed() or attempt == 1:
                        if isinstance(exc, asyncssh.Error):
                            escape_reason(exc)  # the server's own words
                        raise
                    self._logger.info("connection to %s dropped; reconnecting", self._target)
                    self._discard_live(conn)
                    continue
                try:
                    with anyio.fail_after(limit):
                        if preamble:
                            process.stdin.write(preamble)
                        if stdin:
                            process.stdin.write(stdin)
                        process.stdin.write_eof()
                        stdout, stderr = await _read_output(process, cmd, cap)
                finally:
                    process.close()
            return self._result(cmd, process, stdout, stderr)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _open_session(
        conn: asyncssh.SSHClientConnection, cmd: str
    ) -> asyncssh.SSHClientProcess[bytes]:
        # sshd frees a session slot a moment after the channel's close reaches
        # us, so a refusal right at the MaxSessions limit is retried briefly.
        delay = 0.005
        deadline = anyio.current_time() + _SESSION_RETRY_WINDOW
        while True:
            try:
                return await conn.create_process(cmd, encoding=None)
            except asyncssh.ChannelOpenError:
                if conn.is_closed() or anyio.current_time() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.2)

    @staticmethod
    def _result(
        cmd: str, process: asyncssh.SSHClientProcess[bytes], stdout: bytes, stderr: bytes
    ) -> tuple[bytes, bytes]:
        status = process.returncode
        if status == 0:
            return stdout, stderr
        signal = process.exit_signal[0] if process.exit_signal else None
        what = f"signal {signal}" if signal else f"status {status}"
        raise ExecuteError(
            f"remote command exited with {what}: {cmd[:80]!r}",
            exit_status=status if status is not None and status >= 0 else -1,
            exit_signal=signal,
            stdout=stdout,
            stderr=stderr,
        )

    # -- the connection --------------------------------------------------------

    async def _connection(self) -> asyncssh.SSHClientConnection:
        while True:
            if self._state is _State.CLOSED:
                raise RuntimeError("this SSHExecutor is closed")
            target = self._target
            if target is None:
                raise RuntimeError("SSHExecutor has no target; call set_target() first")
            address = target.address
            live = self._live
            if live is not None:
                if live.target is target and live.address == address and not live.conn.is_closed():
                    return live.conn
                self._discard_live()
            split_address(address, self._port)  # a clear error before waiting on anyone
            if self._attempt is not None:
                attempt = self._attempt
                await attempt.done.wait()
                # Share its failure only if it was for the target still current.
                if attempt.error is not None and attempt.target is self._target:
                    raise attempt.error
                continue  # use the attempt's connection, or start afresh
            await self._attempt_connection(target, address)

    async def _attempt_connection(self, target: ExecutorTarget, address: str) -> None:
        attempt = self._attempt = _Attempt(target)
        try:
            conn = await self._connect_and_verify(target, address)
        except BaseException as exc:
            # Waiters share the failure, but not our cancellation: they retry.
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                attempt.error = exc
            raise
        else:
            if self._state is _State.CLOSED or self._target is not target:
                # closed or re-targeted while we connected: this connection is stale
                conn.close()
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await conn.wait_closed()
            else:
                self._live = _Live(conn, address, target)
        finally:
            self._attempt = None
            attempt.done.set()

    async def _connect_and_verify(
        self, target: ExecutorTarget, address: str
    ) -> asyncssh.SSHClientConnection:
        host, port = split_address(address, self._port)
        try:
            conn = await asyncssh.connect(
                host,
                port,
                username=target.remote_user,
                client_keys=self._signers or None,
                known_hosts=None,  # accept any key here; it is verified below
                agent_path=None,
                config=None,
                password=None,
                kbdint_auth=False,
                encryption_algs=_ENCRYPTION_ALGS,
                connect_timeout=self._connect_timeout,
                login_timeout=self._login_timeout,
                keepalive_interval=self._keepalive_interval,
                keepalive_count_max=self._keepalive_count_max,
            )
        except asyncssh.Error as exc:
            raise escape_reason(exc)  # a disconnect reason is the unproven server's text
        try:
            await self._verify(target, conn)
        except BaseException:
            conn.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await conn.wait_closed()
            raise
        return conn

    async def _verify(self, target: ExecutorTarget, conn: asyncssh.SSHClientConnection) -> None:
        # Writes no state: the caller keeps the connection only if ``target``
        # is still the current target once this returns.
        key = conn.get_server_host_key()
        if key is None:  # pragma: no cover - asyncssh always has one after login
            raise HostKeyError(f"{target}: the server presented no host key")
        # Typed as returning anything: a verifier that returns False must fail.
        verify = cast(Callable[..., Awaitable[object]], target.verify_host_key)
        try:
            with anyio.fail_after(self._verify_timeout):
                result = await verify(key, conn)
        except NotImplementedError:
            self._trust_on_first_key(target, key)
            return
        except HostKeyError as exc:
            raise _escaped(exc)
        except TimeoutError:
            raise HostKeyError(
                f"{target}: host key verification timed out ({self._verify_timeout:g} s)"
            ) from None
        except Exception as exc:
            raise HostKeyError(
                f"{target}: host key verification failed: "
                f"{printable(str(exc) or type(exc).__name__, limit=_MESSAGE_LIMIT)}"
            ) from exc
        if result is not None:
            raise HostKeyError(
                f"{target}: verify_host_key returned {type(result).__name__}, not None; "
                "only None is a pass"
            )
        self._logger.info("verified host key %s of %s", key.get_fingerprint(), target)

    def _trust_on_first_key(self, target: ExecutorTarget, key: asyncssh.SSHKey) -> None:
        if not self._trust_on_first_use:
            raise HostKeyError(
                f"{target}: the driver cannot verify host keys; build the executor "
                "with trust_on_first_use=True to accept the first key"
            ) from None
        first = self._first_key
        if first is not None and first[0] is target:
            if first[1] != key.public_data:
                raise HostKeyError(f"{target}: the host key changed since it was first trusted")
            return
        if self._target is not target:
            return  # re-targeted meanwhile: the caller drops this connection
        self._first_key = (target, key.public_data)
        self._logger.warning(
            "trusting host key %s of %s on first use", key.get_fingerprint(), target
        )

    def _discard_live(self, conn: asyncssh.SSHClientConnection | None = None) -> None:
        # Synchronous on purpose: bookkeeping first, the awaited close later
        # (in close()), so a cancellation can never leave a half-dropped state.
        live = self._live
        if live is None or (conn is not None and live.conn is not conn):
            return
        self._live = None
        self._closing = [c for c in self._closing if not c.is_closed()]
        self._closing.append(live.conn)
        live.conn.close()

    async def close(self) -> None:
        """Close every connection and wait until they are closed. Later
        ``execute`` calls raise RuntimeError; calling ``close`` twice is harmless."""
        self._state = _State.CLOSED
        self._discard_live()
        closing, self._closing = self._closing, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            for conn in closing:
                await conn.wait_closed()

    async def __aenter__(self) -> SSHExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
