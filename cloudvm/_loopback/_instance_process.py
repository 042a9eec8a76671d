"""The body of a loopback instance process (see ``_server.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from urllib.parse import unquote

import asyncssh
import h11

from . import _state

__all__ = ["main"]

_log = logging.getLogger("cloudvm.loopback.instance")

METADATA_HOST = "169.254.169.254"
METADATA_PORT = 80
_TOKEN_HEADER = b"x-aws-ec2-metadata-token"
_TTL_HEADER = b"x-aws-ec2-metadata-token-ttl-seconds"
_MAX_TOKEN_TTL = 21600  # seconds, as EC2
_ORPHAN_CHECK_INTERVAL = 1.0  # seconds between checks that our record still exists
_READ_SIZE = 65536


class _Metadata:
    """An IMDSv2-like metadata service, one HTTP/1.1 connection per channel.

    PUT /latest/api/token (with a TTL header) returns a session token; every GET
    must carry it. GET paths: /latest/meta-data/instance-id,
    /latest/meta-data/tags/instance (one key per line) and
    /latest/meta-data/tags/instance/<key>; the instance secret is the tag
    ``cloudvm-secret``, as the EC2 driver stores it.
    """

    def __init__(self, instance_dir: Path, record: _state.InstanceRecord) -> None:
        self._dir = instance_dir
        self._record = record
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)

    async def serve(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(_READ_SIZE))
                    continue
                if isinstance(event, h11.Request):
                    body = b""
                    while True:
                        part = conn.next_event()
                        if part is h11.NEED_DATA:
                            conn.receive_data(await reader.read(_READ_SIZE))
                        elif isinstance(part, h11.Data):
                            body += part.data
                        elif isinstance(part, h11.EndOfMessage):
                            break
                        else:
                            return
                    status, payload = self._answer(event)
                    headers = [
                        ("content-type", "text/plain"),
                        ("content-length", str(len(payload))),
                    ]
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    writer.write(conn.send(h11.Data(data=payload)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:  # ConnectionClosed, or a protocol we do not serve
                    return
        except (h11.RemoteProtocolError, OSError, asyncssh.Error):
            return
        finally:
            writer.close()

    def _answer(self, request: h11.Request) -> tuple[int, bytes]:
        headers = dict(request.headers)
        path = unquote(request.target.decode("ascii", "replace").split("?", 1)[0])
        if request.method == b"PUT" and path == "/latest/api/token":
            try:
                ttl = int(headers.get(_TTL_HEADER, b""))
            except ValueError:
                return 400, b"missing or invalid token TTL\n"
            if not 1 <= ttl <= _MAX_TOKEN_TTL:
                return 400, b"token TTL out of range\n"
            token = secrets.token_urlsafe(32)
            self._tokens[token] = time.monotonic() + ttl
            return 200, token.encode()
        if request.method != b"GET":
            return 405, b"method not allowed\n"
        token = headers.get(_TOKEN_HEADER, b"").decode("ascii", "replace")
        if self._tokens.get(token, 0.0) < time.monotonic():
            return 401, b"a valid session token is required\n"
        if path == "/latest/meta-data/instance-id":
            return 200, self._record.id.encode()
        tags = dict(_state.read_tags(self._dir) or {})
        tags["cloudvm-secret"] = self._record.secret
        if path == "/latest/meta-data/tags/instance":
            return 200, "\n".join(sorted(tags)).encode()
        prefix = "/latest/meta-data/tags/instance/"
        if path.startswith(prefix) and path[len(prefix) :] in tags:
            return 200, tags[path[len(prefix) :]].encode()
        return 404, b"not found\n"


class _Server(asyncssh.SSHServer):
    def __init__(self, record: _state.InstanceRecord, metadata: _Metadata) -> None:
        self._record = record
        self._metadata = metadata
        self._key = (
            asyncssh.import_public_key(record.authorized_key) if record.authorized_key else None
        )

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return (
            self._key is not None
            and username == self._record.remote_user
            and key.public_data == self._key.public_data
        )

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHSocketSessionFactory:
        if (dest_host, dest_port) == (METADATA_HOST, METADATA_PORT):
            return self._metadata.serve
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "this instance forwards only to its metadata service",
        )


class _Commands:
    """Runs each session's command with /bin/sh -c, pumping its streams by hand
    (asyncssh's redirect onto subprocess pipes can lose output)."""

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir
        self.running: set[asyncio.subprocess.Process] = set()

    async def handle(self, session: asyncssh.SSHServerProcess[bytes]) -> None:
        command = session.command
        if command is None:
            session.stderr.write(b"this instance runs commands only, not interactive shells\n")
            session.exit(1)
            return
        env = dict(os.environ)
        env.update({_text(k): _text(v) for k, v in session.env.items()})
        env["PWD"] = str(self._work_dir)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=self._work_dir,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.running.add(proc)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump_stdin(session, proc))
                tg.create_task(_pump_out(proc.stdout, session.stdout))
                tg.create_task(_pump_out(proc.stderr, session.stderr))
                watcher = tg.create_task(_kill_when_closed(session, proc))
                await proc.wait()
                watcher.cancel()
        except* (OSError, asyncssh.Error):
            pass  # the client went away; the command has been killed
        finally:
            self.running.discard(proc)
            _kill_group(proc)
        status = proc.returncode if proc.returncode is not None else -1
        if status < 0:
            name = signal.Signals(-status).name.removeprefix("SIG")
            session.exit_with_signal(name)
        else:
            session.exit(status)


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
        pass  # the command stopped reading
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
    _kill_group(proc)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


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
    commands = _Commands(instance_dir / _state.WORK)
    metadata = _Metadata(instance_dir, record)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        server_factory=lambda: _Server(record, metadata),
        process_factory=commands.handle,
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
    for proc in list(commands.running):
        _kill_group(proc)
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
    try:
        asyncio.run(_serve(instance_dir, record))
    finally:
        os.close(lock)
    return 0
