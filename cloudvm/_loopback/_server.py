"""One loopback instance: a detached process running an asyncssh server.

Started as ``python <path of this file> <instance dir>`` (by path, so that
nothing heavy is imported before the fork), or as ``... --fork-server <state
dir>`` to start the state dir's fork server (``_forkserver.py``), which then
forks every instance from itself. The launcher forks at once and exits, so
the process outlives whoever created it (an instance is a cloud resource),
and its creator never has to reap it.

Booting means: wait ``boot_delay``, run the init command once, generate a host
key, listen on 127.0.0.1 (a free port), and publish the address. The server
runs each command with ``/bin/sh -c`` in the instance's ``work`` directory and
serves an IMDSv2-like metadata service that is reachable only through a
direct-tcpip channel to 169.254.169.254:80 on its own SSH connections.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


def _daemonize(log_path: str) -> None:
    # Fork before importing anything heavy, so the launcher exits quickly.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except FileNotFoundError:
        os._exit(1)  # destroyed before it could start: nothing to serve
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fork-server":
        _daemonize(os.path.join(sys.argv[2], "forkserver.log"))
        # The lock first, before the heavy imports: while it is held, clients
        # know a server is starting or running and start no other.
        lock = os.open(os.path.join(sys.argv[2], "forkserver.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os._exit(0)  # another server starts or runs for this state dir
        from cloudvm._loopback._forkserver import serve

        sys.exit(serve(Path(sys.argv[2]), lock))
    if len(sys.argv) != 2:
        sys.exit("usage: python _server.py <instance dir> | --fork-server <state dir>")
    _daemonize(os.path.join(sys.argv[1], "server.log"))
    from cloudvm._loopback._instance_process import main

    sys.exit(main(sys.argv[1]))
