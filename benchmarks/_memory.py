"""Case 5: memory per 10,000 fake instances listed and per open SSH connection.

Each measurement runs in a fresh child process (``python benchmarks/_memory.py
fake COUNT`` or ``... ssh VARIANT HOSTS_JSON KEY_FILE``), which prints its RSS
growth in bytes as JSON, so one measurement's garbage never blurs the next.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncssh
from _servers import ServerFleet, raise_file_limit
from _stats import CaseResult, Row
from _targets import MetadataTarget

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceSetID, InstanceType
from cloudvm.testing import FakeCloud

__all__ = ["run"]

NAME = "memory"
ITYPE = InstanceType(
    name="small",
    provider_type="t3.small",
    vcpus=2,
    ram=2 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.02,
)
USER = "bench"


def _rss() -> int:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")  # pragma: no cover - Linux only


async def _fake(count: int) -> dict[str, int]:
    cloud = FakeCloud({"rate_limits": None})
    instance_set = await cloud.instance_set(InstanceSetID("bench"))
    before = _rss()
    for n in range(count):
        await instance_set.create(ITYPE, ImageID("ami"), {"n": str(n)}, InitCommand(""), None)
    created = _rss()
    listed = await instance_set.instances()
    after = _rss()
    assert len(listed) == count
    return {"created": created - before, "listed": after - created, "total": after - before}


async def _ssh(variant: str, hosts: list[dict[str, Any]], key_file: Path) -> dict[str, int]:
    raise_file_limit()
    key = asyncssh.read_private_key(str(key_file))
    held: list[Any] = []
    before = _rss()
    for host in hosts:
        address = f"127.0.0.1:{host['port']}"
        if variant == "cloudvm":
            target = MetadataTarget(address, USER, host["instance_id"], host["secret"])
            executor = cloudvm.SSHExecutor(target, signers=[key])
            await executor.execute("true")
            held.append(executor)
        else:
            conn = await asyncssh.connect(
                "127.0.0.1",
                host["port"],
                username=USER,
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
                config=None,
            )
            await conn.run("true", check=True, stdin=asyncssh.DEVNULL)
            held.append(conn)
    after = _rss()
    for item in held:
        if isinstance(item, cloudvm.SSHExecutor):
            await item.close()
        else:
            item.close()
            await item.wait_closed()
    return {"total": after - before}


def _child(*args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__)), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "Memory: RSS growth per 10,000 fake instances / per SSH connection")
    instances = 500 if quick else 10_000
    connections = 3 if quick else 200
    repeats = 1 if quick else 3
    scale = 10_000 / instances
    fake: dict[str, list[float]] = {"created": [], "listed": [], "total": []}
    ssh: dict[str, list[float]] = {"cloudvm": [], "asyncssh": []}
    workdir = Path(tempfile.mkdtemp(prefix="cloudvm-bench-memory-"))
    try:
        key = asyncssh.generate_private_key("ssh-ed25519")
        key_file = workdir / "id_ed25519"
        key.write_private_key(key_file)
        os.chmod(key_file, 0o600)
        key.convert_to_public().write_public_key(workdir / "id_ed25519.pub")
        with ServerFleet(connections, workdir / "id_ed25519.pub") as fleet:
            hosts_file = workdir / "hosts.json"
            hosts_file.write_text(json.dumps(fleet.hosts))
            for round_ in range(repeats):
                grown = await anyio.to_thread.run_sync(_child, "fake", str(instances))
                for part, value in grown.items():
                    fake[part].append(value * scale / 2**20)
                order = ["cloudvm", "asyncssh"] if round_ % 2 == 0 else ["asyncssh", "cloudvm"]
                for variant in order:
                    grown = await anyio.to_thread.run_sync(
                        _child, "ssh", variant, str(hosts_file), str(key_file)
                    )
                    ssh[variant].append(grown["total"] / connections / 1024)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    labels = {"created": "fake: create", "listed": "fake: list", "total": "fake: create+list"}
    for part, values in fake.items():
        result.rows.append(Row(NAME, labels[part], "MiB per 10k instances", values))
    result.rows.append(
        Row(
            NAME,
            "cloudvm SSHExecutor",
            "KiB per connection",
            ssh["cloudvm"],
            ratio_to=("asyncssh",),
        )
    )
    result.rows.append(Row(NAME, "asyncssh", "KiB per connection", ssh["asyncssh"]))
    result.notes.append(
        f"RSS growth in a fresh child process: {instances} fake instances created then listed"
        f" (scaled to 10,000); {connections} connections held open after one command each"
    )
    return result


async def _main(argv: list[str]) -> None:
    if argv[0] == "fake":
        grown = await _fake(int(argv[1]))
    else:
        hosts = json.loads(await anyio.Path(argv[2]).read_text())
        grown = await _ssh(argv[1], hosts, Path(argv[3]))
    print(json.dumps(grown))


if __name__ == "__main__":
    anyio.run(_main, sys.argv[1:])
