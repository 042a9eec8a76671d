"""The loopback InstanceSet and Instance."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncssh

import cloudvm

from .._arguments import SetArguments, check_create_arguments, config_driver
from .._base import InstanceSetBase
from .._critical import run_critical
from .._errors import CloudError, QuotaError
from .._instance_base import InstanceBase
from .._metadata import verify_with_imdsv2
from .._metrics import CallMetrics
from .._protocols import Instance
from .._text import printable
from .._types import (
    ImageID,
    InitCommand,
    InstanceID,
    InstancePrice,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
)
from .._validate import (
    new_secret,
    validate_tags,
)
from . import _forkserver, _state
from ._config import LoopbackConfig

__all__ = ["DRIVER", "LoopbackInstance", "LoopbackInstanceSet"]

_SERVER_SCRIPT = Path(__file__).with_name("_server.py")
# cloudvm's parent directory, so instance processes import this very cloudvm
# even when it runs from a source tree.
_IMPORT_ROOT = str(Path(cloudvm.__file__).resolve().parent.parent)
_POLL_INTERVAL = 0.02  # seconds between checks while waiting on a lock or a process
_SPAWN_TIMEOUT = 60.0  # seconds until the instance process is forked (fork server start included)
_RELAUNCH_AFTER = 1.0  # seconds between starts of a fork server that never took its lock
_FORK_SERVER_EXIT_WAIT = 20.0  # seconds stop() waits for an idle fork server to exit


class LoopbackInstance(InstanceBase):
    """One loopback instance, as of the listing or create that produced it.
    Its ``address`` is ``127.0.0.1:<port>`` once the instance's SSH server
    listens, else ""."""

    def __init__(
        self,
        instance_set: LoopbackInstanceSet,
        record: _state.InstanceRecord,
        tags: InstanceTags,
        address: str,
    ) -> None:
        super().__init__(
            id=record.id,
            provider_type=record.provider_type,
            all_tags=tags,
            address=address,
            remote_user=record.remote_user,
        )
        self._set = instance_set
        self._record = record

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the instance's tags (visible to listings and to the
        instance's metadata service at once)."""
        checked = validate_tags(tags)
        await self._set._set_tags(self, checked)
        self._replace_user_tags(checked)

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """One price, the type's, since the instance was created."""
        return [InstancePrice(datetime.fromisoformat(self._record.created_at), itype.price)]

    async def destroy(self) -> None:
        """Stop the instance's process and delete its state; a no-op if gone."""
        await self._set._destroy(self.id)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove the host through its metadata service: through ``conn``, ask
        169.254.169.254 (IMDSv2: token, then GET) for the instance id and the
        ``cloudvm-secret`` tag, and compare them with what create recorded.

        Raises HostKeyError if they differ or cannot be read, and
        NotImplementedError when ``conn`` is None (the proof needs it).
        """
        if conn is None:
            raise NotImplementedError("loopback verifies host keys only through a live connection")
        await verify_with_imdsv2(
            conn, instance_id=self.id, secret=self._record.secret, who=str(self)
        )


class LoopbackInstanceSet(InstanceSetBase):
    """The loopback cloud's InstanceSet; see the ``loopback`` driver."""

    def __init__(
        self,
        config: LoopbackConfig,
        set_id: InstanceSetID,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        metrics: CallMetrics,
    ) -> None:
        super().__init__()
        self._config = config
        self._id = set_id
        self._logger = logger
        self._metrics = metrics
        self._root = config.state_dir / _state.INSTANCES
        self._create_lock = anyio.Lock()

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Create an instance: record it (tagged) first, then start its process.

        The instance is tagged before anything starts, so a cancelled create
        leaves at worst a recorded instance that listings show and ``destroy``
        removes. Returns at once; ``address`` stays "" until a later listing
        sees the SSH server listening. Raises QuotaError at ``max_instances``.
        """
        self._check_open()
        args = check_create_arguments(itype, image_id, tags, init_command, public_key)
        record = _state.InstanceRecord(
            id=_state.new_instance_id(),
            set_id=self._id,
            provider_type=itype.provider_type,
            image_id=image_id,
            created_at=datetime.now(UTC).isoformat(),
            price=itype.price,
            remote_user=self._config.remote_user,
            secret=new_secret(),
            init_command=args.init_command,
            authorized_key=(
                args.public_key.export_public_key("openssh").decode() if args.public_key else None
            ),
            boot_delay=self._config.boot_delay,
        )

        async def record_and_spawn() -> None:
            async with self._create_lock:
                await anyio.to_thread.run_sync(self._record_instance, record, args.tags)
            await self._spawn(record)

        with self._metrics.observe("create"):
            # Recording and spawning are short and local; as a critical section
            # they finish whatever cancels us, so a cancelled create never
            # leaves a half-written instance nor a recorded one without its
            # process (it leaves a whole, tagged instance, as a cloud would).
            await run_critical(record_and_spawn)
        self._logger.info(
            "created loopback instance %s",
            record.id,
            extra={"instance_id": record.id, "instance_set_id": self._id},
        )
        return LoopbackInstance(self, record, args.tags, "")

    def _record_instance(self, record: _state.InstanceRecord, tags: InstanceTags) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        quota_lock = self._config.state_dir / _state.QUOTA_LOCK
        fd = None
        while fd is None:  # other processes share the quota: serialise with them
            fd = _state.try_lock(quota_lock)
            if fd is None:
                time.sleep(_POLL_INTERVAL)  # a worker thread: blocking is fine here
        try:
            count = sum(1 for _ in _state.instance_dirs(self._config.state_dir))
            if count >= self._config.max_instances:
                raise QuotaError(
                    f"the loopback cloud at {self._config.state_dir} already runs {count} "
                    f"instances (max_instances={self._config.max_instances})",
                    code="InstanceLimitExceeded",
                )
            instance_dir = self._root / record.id
            tmp_dir = self._root / f".{record.id}.creating"
            tmp_dir.mkdir(mode=0o700)
            _state.write_atomic(tmp_dir / _state.TAGS, _json(tags))
            _state.write_atomic(tmp_dir / _state.RECORD, record.to_json())
            # The rename publishes the instance, record and tags at once.
            os.rename(tmp_dir, instance_dir)
        finally:
            os.close(fd)

    async def _spawn(self, record: _state.InstanceRecord) -> None:
        with anyio.fail_after(_SPAWN_TIMEOUT):
            if not self._config.fork_server:
                await self._launch(str(self._root / record.id))
                return
            state_dir = self._config.state_dir
            started_at: float | None = None
            while True:
                try:
                    await self._ask_fork_server(record.id)
                    return
                except _NoForkServer:
                    # While a server holds its lock it is starting (or
                    # exiting): wait for it. Else start one; a start that
                    # loses the race for the lock exits at once.
                    now = anyio.current_time()
                    held = await anyio.to_thread.run_sync(_fork_server_lock_held, state_dir)
                    if not held and (started_at is None or now - started_at > _RELAUNCH_AFTER):
                        started_at = now
                        await self._launch("--fork-server", str(state_dir))
                    await anyio.sleep(_POLL_INTERVAL)

    async def _ask_fork_server(self, instance_id: str) -> None:
        try:
            stream = await anyio.connect_unix(self._config.state_dir / _forkserver.SOCKET)
        except OSError as exc:
            raise _NoForkServer from exc
        async with stream:
            try:
                await stream.send(f"{instance_id}\n".encode())
                answer = b""
                while not answer.endswith(b"\n") and len(answer) < 256:
                    answer += await stream.receive(256)
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise _NoForkServer from exc  # it exited as we asked
        if not answer.startswith(b"ok "):
            raise CloudError(f"the loopback fork server refused {instance_id}: {printable(answer)}")

    async def _launch(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_IMPORT_ROOT, env.get("PYTHONPATH")]))
        python = self._config.python or sys.executable
        # The launcher forks the process and exits at once.
        await anyio.run_process(
            [python, str(_SERVER_SCRIPT), *args],
            env=env,
            check=True,
            stdin=None,
            stdout=None,
            stderr=None,
        )

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every instance of this set carrying all of ``tags``, booting ones
        (address "") included."""
        self._check_open()
        wanted = validate_tags(tags or {})
        with self._metrics.observe("instances"):
            found = await anyio.to_thread.run_sync(self._scan, wanted)
        return [LoopbackInstance(self, record, itags, address) for record, itags, address in found]

    def _scan(self, wanted: InstanceTags) -> list[tuple[_state.InstanceRecord, InstanceTags, str]]:
        found = []
        for instance_dir in _state.instance_dirs(self._config.state_dir):
            record = _state.read_record(instance_dir)
            if record is None or record.set_id != self._id or record.id != instance_dir.name:
                continue  # another set's, half created, or not made by create
            itags = _state.read_tags(instance_dir)
            if itags is None or any(itags.get(k) != v for k, v in wanted.items()):
                continue
            address = _state.read_address(instance_dir) if _state.is_running(instance_dir) else ""
            found.append((record, itags, address))
        return found

    def _instance_dir(self, instance_id: str) -> Path:
        # Ids come from records on disk, which anyone who can write the state
        # dir could plant: only the form create makes may become a path.
        if not _state.is_instance_id(instance_id):
            raise ValueError(f"{instance_id!r} is not a loopback instance id")
        return self._root / instance_id

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """All loopback instances share one quota (``max_instances``)."""
        return InstanceQuotaGroup("loopback")

    async def _set_tags(self, instance: LoopbackInstance, tags: InstanceTags) -> None:
        self._check_open()
        instance_dir = self._instance_dir(instance.id)
        with self._metrics.observe("set_tags"):
            await anyio.to_thread.run_sync(self._write_tags, instance_dir, tags)

    def _write_tags(self, instance_dir: Path, tags: InstanceTags) -> None:
        record = _state.read_record(instance_dir)
        if record is None or record.set_id != self._id:
            raise LookupError(f"loopback instance {instance_dir.name} no longer exists")
        _state.write_atomic(instance_dir / _state.TAGS, _json(tags))

    async def _destroy(self, instance_id: InstanceID) -> None:
        instance_dir = self._instance_dir(instance_id)
        with self._metrics.observe("destroy"):
            # Critical: a destroy half done would leave a process without state.
            await run_critical(lambda: self._stop_process(instance_dir))
        self._logger.info(
            "destroyed loopback instance %s",
            instance_id,
            extra={"instance_id": instance_id, "instance_set_id": self._id},
        )

    async def _stop_process(self, instance_dir: Path) -> None:
        deadline = anyio.current_time() + self._config.destroy_timeout
        signalled: int | None = None
        while True:
            pid = await anyio.to_thread.run_sync(_remove_if_stopped, instance_dir)
            if pid is None:
                return
            if pid == 0:
                pass  # starting up: wait for its pid
            elif signalled is None:
                signalled = signal.SIGTERM
                _signal_group(pid, signal.SIGTERM)
            elif anyio.current_time() > deadline and signalled != signal.SIGKILL:
                signalled = signal.SIGKILL
                _signal_group(pid, signal.SIGKILL)
            await anyio.sleep(_POLL_INTERVAL)

    async def _stop(self) -> None:
        # Instances are cloud resources and keep running; the set holds no
        # background tasks or clients of its own. When no instance is left in
        # the state dir, the fork server is about to exit: wait for it, so
        # that leaving ``async with`` leaves no process behind.
        if self._config.fork_server:
            with anyio.move_on_after(_FORK_SERVER_EXIT_WAIT):
                lingers = functools.partial(_fork_server_lingers, self._config.state_dir)
                while await anyio.to_thread.run_sync(lingers):  # noqa: ASYNC110 - another process
                    await anyio.sleep(_POLL_INTERVAL)


def _json(tags: Mapping[str, str]) -> str:
    return json.dumps(dict(tags), ensure_ascii=False)


class _NoForkServer(Exception):
    """No fork server answered (none runs yet, or it was exiting)."""


def _fork_server_lock_held(state_dir: Path) -> bool:
    """True while a fork server for ``state_dir`` starts, runs or exits."""
    fd = _state.try_lock(state_dir / _forkserver.LOCK)
    if fd is None:
        return (state_dir / _forkserver.LOCK).exists()
    os.close(fd)
    return False


def _fork_server_lingers(state_dir: Path) -> bool:
    """True while a fork server runs for ``state_dir`` with no instance left."""
    if any(_state.instance_dirs(state_dir)):
        return False  # it serves other instances: it stays
    return _fork_server_lock_held(state_dir)


def _remove_if_stopped(instance_dir: Path) -> int | None:
    """Delete the instance if no process holds it and return None; else return
    the pid of the process holding it (0 while it has not written its pid)."""
    fd = _state.try_lock(instance_dir / _state.LOCK)
    if fd is None:
        if not instance_dir.exists():
            return None  # already gone
        try:
            return int((instance_dir / _state.PID).read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0
    # Delete while we hold the lock, so that a server starting now finds no
    # record and exits. The rename comes first: a server starting this very
    # moment opens its files by the instance's path, which is then gone, so
    # it cannot create one in the directory being deleted (which would leave
    # the directory behind, half deleted and unlisted).
    tomb = instance_dir.with_name(f".{instance_dir.name}.destroyed")
    try:
        os.rename(instance_dir, tomb)
        shutil.rmtree(tomb, ignore_errors=True)
    finally:
        os.close(fd)
    return None


def _signal_group(pid: int, signum: int) -> None:
    if pid <= 0:
        return  # the server has not written its pid yet; the next poll will see it
    # The server leads its own session; its commands run in their own groups
    # and it kills them itself on SIGTERM. SIGKILL takes the server's group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if signum == signal.SIGKILL:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


async def _open_instance_set(args: SetArguments[LoopbackConfig]) -> LoopbackInstanceSet:
    await anyio.to_thread.run_sync(_state.prepare_state_dir, args.config.state_dir)
    metrics = CallMetrics(args.registry, "loopback")
    return LoopbackInstanceSet(args.config, args.id, args.logger, metrics)


#: The loopback driver; ``cloudvm.load_driver("loopback")`` returns it.
DRIVER = config_driver(LoopbackConfig, _open_instance_set, name="loopback")
