"""Case: what one loopback instance costs (the demo's and the tests' cloud).

Each round boots N instances with the loopback driver on a fresh state dir
and waits until every one has its address and has been proven and has run
``true`` through an SSHExecutor; then it reads /proc: CPU (user + system,
with the children each process waited for) of every instance process and of
the fork server, and each instance's PSS (its pages, those shared
copy-on-write with the fork server split among the sharers) and RSS (every
page it maps, shared ones whole). Then everything is destroyed and the
round waits until no process of it is left.

Side by side, what each instance cost before the fork server: a fresh
interpreter that imports what an instance process imports
(``cloudvm._loopback._instance_process``), measured the same way; that is
its start-up alone, before it boots or serves anything.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread
import asyncssh
from _stats import CaseResult, Row

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceSetID, InstanceType

__all__ = ["run"]

NAME = "loopback"
ITYPE = InstanceType(
    name="small",
    provider_type="loopback",
    vcpus=1,
    ram=1 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.0,
)
FORKED = "loopback instance (forked)"
FRESH = "fresh interpreter per instance (start-up only)"
BOOT_TIMEOUT = 300.0  # seconds for a whole round to boot and be proven
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, so utime..cstime (14-17) are 11-14 here.
    return sum(int(value) for value in fields[11:15]) / _TICK


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Rss"):
            values[name] = int(rest.split()[0]) * 1024
    return values["Pss"], values["Rss"]


def _fork_server_pids(state_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if b"--fork-server" in argv and os.fsencode(state_dir) in argv:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float = 60.0) -> None:
    """Return once no process of ``pids`` is left (they are not our children:
    the fork server's), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} still run {timeout:g} s after their destroy")
        time.sleep(0.05)


async def _forked_round(count: int) -> dict[str, float]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with tempfile.TemporaryDirectory(prefix="cloudvm-bench-loopback-") as tmp:
        state_dir = Path(tmp)
        driver = cloudvm.load_driver("loopback")
        async with await driver.instance_set(
            {"state_dir": str(state_dir), "max_instances": count},
            InstanceSetID("bench"),
            {},
            logging.getLogger("bench.loopback"),
        ) as instance_set:
            started = time.perf_counter()
            created = [
                await instance_set.create(
                    ITYPE, ImageID("local"), {}, InitCommand(""), key.convert_to_public()
                )
                for _ in range(count)
            ]
            try:
                with anyio.fail_after(BOOT_TIMEOUT):
                    booted: list[cloudvm.Instance] = []
                    while len(booted) < count:
                        await anyio.sleep(0.02)
                        booted = [i for i in await instance_set.instances() if i.address]

                    async def prove(instance: cloudvm.Instance) -> None:
                        async with cloudvm.SSHExecutor(instance, signers=[key]) as executor:
                            await executor.execute("true")

                    async with anyio.create_task_group() as tg:
                        for instance in booted:
                            tg.start_soon(prove, instance)
                seconds = time.perf_counter() - started
                pids = [int((state_dir / "instances" / i.id / "pid").read_text()) for i in created]
                servers = _fork_server_pids(state_dir)
                cpu = sum(_cpu_seconds(pid) for pid in pids)
                memory = [_memory(pid) for pid in pids]
                server_cpu = sum(_cpu_seconds(pid) for pid in servers)
                server_pss = sum(_memory(pid)[0] for pid in servers)
            finally:
                await cloudvm.run_critical(lambda: _destroy(instance_set))
        await anyio.to_thread.run_sync(_wait_gone, pids + servers)
    return {
        "seconds": seconds,
        "cpu": cpu / count,
        "pss": sum(pss for pss, _ in memory) / count,
        "rss": sum(rss for _, rss in memory) / count,
        "server_cpu": server_cpu,
        "server_pss": server_pss,
    }


async def _destroy(instance_set: cloudvm.InstanceSet) -> None:
    for instance in await instance_set.instances():
        await instance.destroy()


def _fresh_round(count: int) -> dict[str, float]:
    """``count`` fresh interpreters importing an instance's modules, measured
    once every one has imported them."""
    code = "import sys, cloudvm._loopback._instance_process; print(flush=True); sys.stdin.read()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # imported
        cpu = sum(_cpu_seconds(proc.pid) for proc in procs)
        memory = [_memory(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.stdout.close()
    return {
        "cpu": cpu / count,
        "pss": sum(pss for pss, _ in memory) / count,
        "rss": sum(rss for _, rss in memory) / count,
    }


async def run(*, quick: bool) -> CaseResult:
    count = 3 if quick else 20
    repeats = 1 if quick else 3
    forked: list[dict[str, float]] = []
    fresh: list[dict[str, float]] = []
    for _ in range(repeats):  # interleaved: a slow spell hits both alike
        forked.append(await _forked_round(count))
        fresh.append(await anyio.to_thread.run_sync(_fresh_round, count))

    def rows(unit: str, key: str, scale: float) -> list[Row]:
        return [
            Row(NAME, FORKED, unit, [r[key] * scale for r in forked], count, (FRESH,)),
            Row(NAME, FRESH, unit, [r[key] * scale for r in fresh], count),
        ]

    mib = 1 / (1 << 20)
    return CaseResult(
        NAME,
        "One loopback instance: CPU and memory (N instances booted and proven)",
        rows=[
            *rows("CPU ms/instance", "cpu", 1000.0),
            *rows("PSS MiB/instance", "pss", mib),
            *rows("RSS MiB/instance", "rss", mib),
            Row(
                NAME,
                "boot N, each proven and run `true`",
                "s",
                [r["seconds"] for r in forked],
                count,
            ),
            Row(
                NAME,
                "fork server, once per state dir",
                "CPU ms",
                [r["server_cpu"] * 1000 for r in forked],
                count,
            ),
            Row(
                NAME,
                "fork server, once per state dir",
                "PSS MiB",
                [r["server_pss"] * mib for r in forked],
                count,
            ),
        ],
        notes=[
            f"{count} instances per round, {repeats} rounds; an instance's CPU is its whole "
            "life up to the measurement: fork, SSH server start, host key, the proof and "
            "`true` (its shell included); the fresh interpreter's is its start-up and imports "
            "alone; PSS splits the pages shared with the fork server among the sharers, RSS "
            "counts them whole in every instance"
        ],
    )
