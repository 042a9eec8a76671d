"""Case 2: connect, verify and run one command on N hosts at once.

The primary figure is the client's CPU time per host (what bounds how many
hosts one dispatcher process drives); the servers run in other processes, so
it is the client's own. Hosts per second is secondary (on a shared 2-core
machine the servers compete for the same cores). A second part counts the
round trips that verification adds to connect-and-run, through a proxy that
delays every byte.

Run alone as ``python benchmarks/_fanout.py [--hosts N] [--concurrency C]
[--repeats R] [--quick]``; ``benchmarks/run.py`` runs it with the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncssh
from _delay_proxy import delay_proxy
from _report import machine, table
from _servers import ServerFleet, raise_file_limit
from _stats import CaseResult, Probe, Row, interleaved
from _targets import MetadataTarget

import cloudvm

__all__ = ["run"]

NAME = "fanout"
CLOUDVM = "cloudvm SSHExecutor+verify"
ASYNCSSH_VERIFY = "asyncssh+verify_with_imdsv2"
ASYNCSSH = "asyncssh, no verify"
PSSH = "parallel-ssh, no verify"
USER = "bench"
COMMAND = "true"
HOSTS = 500  # hosts per run at full size
CONCURRENCY = 100  # connections being set up at once, for every variant (pssh's pool_size)
REPEATS = 3
SERVER_PROCESSES = 2
DELAY = 0.1  # seconds each way through the round-trip proxy
ROUND_TRIP_SAMPLES = 5
CPU_UNIT = "client CPU ms/host"
RATE_UNIT = "hosts/s"
RTT_UNIT = "round trips"
FLIGHT_UNIT = "client flights"  # round trips counted by the proxy, not timed

Hosts = list[dict[str, Any]]


async def _cloudvm_one(host: dict[str, Any], key: asyncssh.SSHKey, port: int) -> None:
    target = MetadataTarget(f"127.0.0.1:{port}", USER, host["instance_id"], host["secret"])
    async with cloudvm.SSHExecutor(target, signers=[key]) as executor:
        await executor.execute(COMMAND)


async def _asyncssh_one(
    host: dict[str, Any], key: asyncssh.SSHKey, port: int, *, verify: bool
) -> None:
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
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


#: One host, connected on a given port: what each async variant does.
OneHost = Callable[[dict[str, Any], asyncssh.SSHKey, int], Awaitable[None]]


def _variants() -> dict[str, OneHost]:
    async def plain(host: dict[str, Any], key: asyncssh.SSHKey, port: int) -> None:
        await _asyncssh_one(host, key, port, verify=False)

    async def by_hand(host: dict[str, Any], key: asyncssh.SSHKey, port: int) -> None:
        await _asyncssh_one(host, key, port, verify=True)

    return {CLOUDVM: _cloudvm_one, ASYNCSSH_VERIFY: by_hand, ASYNCSSH: plain}


async def _fan_out(one: OneHost, hosts: Hosts, key: asyncssh.SSHKey, concurrency: int) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def limited(host: dict[str, Any]) -> None:
        async with limiter:
            await one(host, key, host["port"])

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(limited, host)


def _pssh(hosts: Hosts, key_file: Path, concurrency: int) -> None:
    # Imported by name: an optional dependency the type checker may not have.
    pssh_clients = importlib.import_module("pssh.clients")
    pssh_config = importlib.import_module("pssh.config")
    client = pssh_clients.ParallelSSHClient(
        ["127.0.0.1"] * len(hosts),
        host_config=[
            pssh_config.HostConfig(port=host["port"], user=USER, private_key=str(key_file))
            for host in hosts
        ],
        pool_size=concurrency,
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


class _Measured:
    """Wraps a fan-out as a probe returning client CPU ms per host (the
    process's CPU time: every thread of it, none of the server processes),
    and keeps each run's hosts/s on the side."""

    def __init__(self, action: Callable[[], Awaitable[None]], count: int) -> None:
        self._action = action
        self._count = count
        self.rates: list[float] = []

    async def __call__(self) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        await self._action()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        self.rates.append(self._count / wall)
        return cpu * 1000 / self._count


def _probes(
    hosts: Hosts, key: asyncssh.SSHKey, key_file: Path, concurrency: int, *, with_pssh: bool
) -> dict[str, _Measured]:
    n = len(hosts)

    def fan_out(one: OneHost) -> Callable[[], Awaitable[None]]:
        return lambda: _fan_out(one, hosts, key, concurrency)

    probes = {name: _Measured(fan_out(one), n) for name, one in _variants().items()}
    if with_pssh:
        probes[PSSH] = _Measured(
            lambda: anyio.to_thread.run_sync(_pssh, hosts, key_file, concurrency), n
        )
    return probes


async def _round_trips(
    host: dict[str, Any], key: asyncssh.SSHKey, samples: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Wall time of one connect-and-run through the delaying proxy, in round
    trips (seconds over 2 * DELAY), per variant, interleaved; and the client
    flights the proxy counted in each of those runs."""
    flights: dict[str, list[int]] = {name: [] for name in _variants()}
    async with delay_proxy(host["port"], DELAY) as proxy:

        def probe(name: str, one: OneHost) -> Probe:
            async def timed() -> float:
                before = proxy.client_flights
                start = time.perf_counter()
                await one(host, key, proxy.port)
                elapsed = time.perf_counter() - start
                flights[name].append(proxy.client_flights - before)
                return elapsed / (2 * DELAY)

            return timed

        probes = {name: probe(name, one) for name, one in _variants().items()}
        trips = await interleaved(probes, repeats=samples, warmup=1)
        # The warm-up's counts are not samples.
        return trips, {name: counts[-samples:] for name, counts in flights.items()}


def _plan(quick: bool, hosts: int, repeats: int) -> list[tuple[int, int]]:
    """(N, repeats) per size."""
    if quick:
        return [(2, 1), (4, 1)]
    return [(10, 5), (hosts, repeats)]


async def run(
    *,
    quick: bool,
    hosts: int = HOSTS,
    concurrency: int = CONCURRENCY,
    repeats: int = REPEATS,
) -> CaseResult:
    result = CaseResult(
        NAME,
        "SSH fan-out: connect, verify, run `true` on N hosts (client CPU ms/host; hosts/s)",
    )
    raise_file_limit()
    plan = _plan(quick, hosts, repeats)
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
        public = workdir / "id_ed25519.pub"
        with ServerFleet(largest, public, processes=SERVER_PROCESSES) as fleet:
            for n, rounds in plan:
                probes = _probes(
                    fleet.hosts[:n], key, key_file, concurrency, with_pssh=missing is None
                )
                # Warm up once, at the smallest N: imports and caches, not per size.
                warmup = 1 if n == plan[0][0] else 0
                samples = await interleaved(dict(probes), repeats=rounds, warmup=warmup)
                for variant, values in samples.items():
                    cloudvm_row = variant == CLOUDVM
                    result.rows.append(
                        Row(
                            NAME,
                            variant,
                            CPU_UNIT,
                            values,
                            n=n,
                            ratio_to=(ASYNCSSH, PSSH) if cloudvm_row else None,
                        )
                    )
                    result.rows.append(
                        Row(
                            NAME,
                            variant,
                            RATE_UNIT,
                            probes[variant].rates[-rounds:],
                            n=n,
                            ratio_to=(ASYNCSSH, PSSH) if cloudvm_row else None,
                            higher_is_better=True,
                        )
                    )
            trips, flights = await _round_trips(
                fleet.hosts[0], key, 1 if quick else ROUND_TRIP_SAMPLES
            )
        _round_trip_rows(result, trips, flights)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.notes.append(
        f"servers: {largest} asyncssh SSHTestServers with IMDSv2 spread over "
        f"{SERVER_PROCESSES} child processes; {concurrency} connections set up at once in "
        "every variant; a fresh connection per host per run; verification is "
        "cloudvm.driverkit.verify_with_imdsv2 (the loopback, fake and EC2 drivers' own); "
        "client CPU is the client process's CPU time (all its threads) over N; "
        "CPU ratios < 1 and hosts/s ratios > 1 mean cloudvm is cheaper/faster"
    )
    result.notes.append(
        f"round trips: one host at a time through a proxy adding {DELAY * 1000:g} ms each "
        "way; 'verification' is cloudvm's connect-verify-run minus asyncssh's connect-run, "
        "in round trips of the proxy (timed) and in client flights (counted: data the "
        "client sent after the server last spoke)"
    )
    return result


def _round_trip_rows(
    result: CaseResult, trips: dict[str, list[float]], flights: dict[str, list[int]]
) -> None:
    for variant, values in trips.items():
        result.rows.append(Row(NAME, f"{variant}: connect-and-run", RTT_UNIT, values, n=1))
    # Differences sample by sample: the rounds were interleaved, so sample k
    # of each variant saw the same spell of the machine.
    added = [a - b for a, b in zip(trips[CLOUDVM], trips[ASYNCSSH], strict=True)]
    counted = [float(a - b) for a, b in zip(flights[CLOUDVM], flights[ASYNCSSH], strict=True)]
    verification = "cloudvm verification (over asyncssh, no verify)"
    result.rows.append(Row(NAME, verification, RTT_UNIT, added, n=1))
    result.rows.append(Row(NAME, verification, FLIGHT_UNIT, counted, n=1))
    result.extra["client flights"] = flights


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, one round (smoke test)")
    parser.add_argument("--hosts", type=int, default=HOSTS, help="hosts per run at full size")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="at once")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="interleaved rounds")
    parser.add_argument("--out", type=Path, help="write fanout.json into this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)

    async def measure() -> CaseResult:
        return await run(
            quick=args.quick, hosts=args.hosts, concurrency=args.concurrency, repeats=args.repeats
        )

    result = anyio.run(measure)
    print(table([result]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {"machine": machine(), **result.as_json()}
        (args.out / f"{NAME}.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
