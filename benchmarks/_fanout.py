"""Case 2: connect, verify and run one command on N hosts at once."""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncssh
from _servers import ServerFleet, raise_file_limit
from _stats import CaseResult, Probe, Row, interleaved
from _targets import MetadataTarget

import cloudvm

__all__ = ["run"]

NAME = "fanout"
CLOUDVM = "cloudvm SSHExecutor+verify"
ASYNCSSH_VERIFY = "asyncssh+verify by hand"
ASYNCSSH = "asyncssh, no verify"
PSSH = "parallel-ssh, no verify"
USER = "bench"
COMMAND = "true"
CONCURRENCY = 100  # connections being set up at once, for every variant (pssh's pool_size)


async def _cloudvm(hosts: list[dict[str, Any]], key: asyncssh.SSHKey) -> None:
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(host: dict[str, Any]) -> None:
        target = MetadataTarget(
            f"127.0.0.1:{host['port']}", USER, host["instance_id"], host["secret"]
        )
        async with limiter, cloudvm.SSHExecutor(target, signers=[key]) as executor:
            await executor.execute(COMMAND)

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(one, host)


async def _asyncssh(hosts: list[dict[str, Any]], key: asyncssh.SSHKey, *, verify: bool) -> None:
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(host: dict[str, Any]) -> None:
        async with limiter:
            conn = await asyncssh.connect(
                "127.0.0.1",
                host["port"],
                username=USER,
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
                config=None,
            )
            async with conn:
                if verify:
                    target = MetadataTarget("", USER, host["instance_id"], host["secret"])
                    server_key = conn.get_server_host_key()
                    assert server_key is not None
                    await target.verify_host_key(server_key, conn)
                # EOF on stdin at once: SSHTestServer ends a session only after
                # the client's EOF (SSHExecutor sends it too).
                await conn.run(COMMAND, check=True, stdin=asyncssh.DEVNULL)

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(one, host)


def _pssh(hosts: list[dict[str, Any]], key_file: Path) -> None:
    # Imported by name: an optional dependency the type checker may not have.
    pssh_clients = importlib.import_module("pssh.clients")
    pssh_config = importlib.import_module("pssh.config")
    client = pssh_clients.ParallelSSHClient(
        ["127.0.0.1"] * len(hosts),
        host_config=[
            pssh_config.HostConfig(port=host["port"], user=USER, private_key=str(key_file))
            for host in hosts
        ],
        pool_size=CONCURRENCY,
        num_retries=1,
        timeout=120,
        allow_agent=False,
    )
    try:
        output = client.run_command(COMMAND)
        for out in output:  # EOF on stdin, as the other variants send
            if out.client is not None and out.channel is not None:
                out.client.eagain(out.channel.send_eof)
        client.join(output)
        failed = [out for out in output if out.exit_code != 0 or out.exception is not None]
        if failed:
            raise RuntimeError(f"parallel-ssh: {len(failed)} hosts failed: {failed[0]}")
    finally:
        # ParallelSSHClient has no public close: drop each host's session.
        for host_client in getattr(client, "_host_clients", {}).values():
            if host_client is not None:
                host_client.disconnect()


def _pssh_missing() -> str | None:
    try:
        importlib.import_module("pssh.clients")
    except ImportError as exc:
        return (
            f"parallel-ssh is not installed here ({exc}); `nox -s bench` installs it, "
            "see its log for why that failed"
        )
    return None


def _timed(action: Callable[[], Awaitable[None]], count: int) -> Callable[[], Awaitable[float]]:
    async def probe() -> float:
        start = time.perf_counter()
        await action()
        return count / (time.perf_counter() - start)

    return probe


def _probes(
    hosts: list[dict[str, Any]], key: asyncssh.SSHKey, key_file: Path, *, with_pssh: bool
) -> dict[str, Probe]:
    n = len(hosts)
    probes = {
        CLOUDVM: _timed(lambda: _cloudvm(hosts, key), n),
        ASYNCSSH_VERIFY: _timed(lambda: _asyncssh(hosts, key, verify=True), n),
        ASYNCSSH: _timed(lambda: _asyncssh(hosts, key, verify=False), n),
    }
    if with_pssh:
        probes[PSSH] = _timed(lambda: anyio.to_thread.run_sync(_pssh, hosts, key_file), n)
    return probes


def _plan(quick: bool) -> list[tuple[int, int]]:
    """(N, repeats) per size."""
    if quick:
        return [(2, 1), (4, 1)]
    return [(10, 5), (100, 3), (500, 2), (1000, 2)]


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "SSH fan-out: connect, verify, run `true` on N hosts (hosts/s)")
    raise_file_limit()
    plan = _plan(quick)
    largest = max(n for n, _ in plan)
    key = asyncssh.generate_private_key("ssh-ed25519")
    workdir = Path(tempfile.mkdtemp(prefix="cloudvm-bench-fanout-"))
    missing = _pssh_missing()
    if missing:
        result.notes.append(missing)
    try:
        key_file = workdir / "id_ed25519"
        key.write_private_key(key_file)
        os.chmod(key_file, 0o600)
        key.convert_to_public().write_public_key(workdir / "id_ed25519.pub")
        with ServerFleet(largest, workdir / "id_ed25519.pub") as fleet:
            for n, repeats in plan:
                hosts = fleet.hosts[:n]
                probes = _probes(hosts, key, key_file, with_pssh=missing is None)
                # Warm up once, at the smallest N: imports and caches, not per size.
                warmup = 1 if n == plan[0][0] else 0
                samples = await interleaved(probes, repeats=repeats, warmup=warmup)
                for variant, values in samples.items():
                    result.rows.append(
                        Row(
                            NAME,
                            variant,
                            "hosts/s",
                            values,
                            n=n,
                            ratio_to=(ASYNCSSH, PSSH) if variant == CLOUDVM else None,
                            higher_is_better=True,
                        )
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.notes.append(
        f"servers: {largest} asyncssh SSHTestServers with IMDSv2 in a child process; "
        f"{CONCURRENCY} connections set up at once in every variant; a fresh connection "
        "per host per run; ratios > 1 mean cloudvm is faster"
    )
    return result
