"""The loopback cloud's fork server: one per state dir, forking instances.

Starting an instance process from scratch costs an interpreter start and the
import of asyncssh and cloudvm (about half a second of CPU and 50 MiB each,
measured in the benchmarks). Nearly all of it is the same for every instance,
so one process per state dir pays it once and forks each instance from
itself: the forked instance shares those pages copy-on-write (``gc.freeze``
keeps the collector from dirtying them) and starts in milliseconds.

Protocol, over ``state_dir/forkserver.sock`` (mode 0600, in the 0700 state
dir): the driver sends an instance id and a newline; the server forks the
instance and answers ``ok <pid>\\n`` (or ``error <reason>\\n``). The server
holds ``state_dir/forkserver.lock`` for its whole life, so at most one runs
per state dir, and exits by itself once the state dir holds no instance for
:data:`IDLE_EXIT` seconds (instances are cloud resources: they outlive it).

Started as ``python _server.py --fork-server <state dir>``; see ``_server.py``,
which takes the lock first and exits at once when another server holds it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from . import _instance_process, _state

__all__ = ["IDLE_EXIT", "LOCK", "SOCKET", "serve"]

SOCKET = "forkserver.sock"
LOCK = "forkserver.lock"
LOG = "forkserver.log"
#: Seconds without instances (and without requests) after which the server exits.
IDLE_EXIT = 0.5
_POLL = 0.1  # seconds between checks for instances while idle
_REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request
_MAX_REQUEST = 256  # bytes: an instance id and a newline


def serve(state_dir: Path, lock: int) -> int:
    """Run the fork server for ``state_dir`` until it is idle; returns the
    exit status. ``lock`` is the descriptor holding ``LOCK``, taken by the
    caller before anything heavy was imported (so a server still starting
    up is seen as running); it is released as the process ends."""
    path = state_dir / SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a server that died
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(128)
    # Forked instances reap their own children; ours are reaped by the kernel.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Everything imported so far is shared with every instance we fork:
    # keep the collector from touching (and so copying) those pages.
    gc.collect()
    gc.freeze()
    last_busy = time.monotonic()
    try:
        while True:
            readable, _, _ = select.select([listener], [], [], _POLL)
            now = time.monotonic()
            if readable:
                conn, _ = listener.accept()
                with conn:
                    _answer(conn, state_dir, listener, lock)
                last_busy = now
            elif any(_state.instance_dirs(state_dir)) or not state_dir.exists():
                if not state_dir.exists():
                    return 0  # the whole cloud was deleted
                last_busy = now
            elif now - last_busy >= IDLE_EXIT:
                return 0
    finally:
        # Unlink before the lock goes: a client that finds no socket starts a
        # new server, which then waits for this lock.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener.close()
        # The lock stays held until the kernel closes it as the process ends:
        # whoever waits for it (the set's stop) knows the server is gone.


def _answer(conn: socket.socket, state_dir: Path, listener: socket.socket, lock: int) -> None:
    conn.settimeout(_REQUEST_TIMEOUT)
    try:
        request = _read_line(conn)
    except (OSError, ValueError):
        return  # the client went away or sent nonsense: nothing to answer
    if not _state.is_instance_id(request):
        conn.sendall(b"error not an instance id\n")
        return
    instance_dir = state_dir / _state.INSTANCES / request
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the instance
        status = 1
        try:
            # An instance holds nothing of the server's: not its socket, and
            # not its lock, which would outlive a server that died.
            os.close(lock)
            listener.close()
            conn.close()
            status = _become_instance(instance_dir)
        finally:
            os._exit(status)
    with contextlib.suppress(OSError):
        conn.sendall(f"ok {pid}\n".encode())


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(_MAX_REQUEST)
        if not chunk or len(data) + len(chunk) > _MAX_REQUEST:
            raise ValueError("no complete request")
        data += chunk
    return data[:-1].decode("ascii", "replace")


def _become_instance(instance_dir: Path) -> int:
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # asyncio waits for its children
    try:
        log = os.open(
            instance_dir / _state.SERVER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
    except FileNotFoundError:
        return 1  # destroyed before it could start: nothing to serve
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return _instance_process.main(str(instance_dir))
