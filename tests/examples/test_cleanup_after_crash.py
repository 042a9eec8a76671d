"""examples/cleanup_after_crash.py finds, by set id, the instances of a run
that was killed before its cleanup, and destroys them and nothing else."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import anyio

import cloudvm

from ..support import processes_mentioning, wait_until

# A dispatcher that creates two instances in its set (and a third, in another
# set, stands for someone else's), then dies before it can clean up.
CRASHING_RUN = """
import asyncio, logging, os, signal, sys
import cloudvm

SMALL = cloudvm.InstanceType("small", "loopback.small", 1, 2**30, 0, 0, 0, 0.0)

async def main():
    driver = cloudvm.load_driver("loopback")
    config = {"state_dir": sys.argv[1]}
    log = logging.getLogger("crashing")
    ours = await driver.instance_set(config, cloudvm.InstanceSetID("crashed-run"), {}, log)
    theirs = await driver.instance_set(config, cloudvm.InstanceSetID("bystander"), {}, log)
    for instance_set, run in ((ours, "1"), (ours, "2"), (theirs, "1")):
        instance = await instance_set.create(
            SMALL, cloudvm.ImageID("local"), {"run": run}, cloudvm.InitCommand(""), None
        )
        print(instance.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def listed(state_dir: Path, set_id: str) -> list[str]:
    """The ids a set with ``set_id`` lists: the cloud as anyone sees it."""
    driver = cloudvm.load_driver("loopback")
    async with await driver.instance_set(
        {"state_dir": str(state_dir)}, cloudvm.InstanceSetID(set_id), {}, logging.getLogger()
    ) as instance_set:
        return sorted({i.id for i in await instance_set.instances()})


async def destroy_every_instance(state_dir: Path, *set_ids: str) -> None:
    driver = cloudvm.load_driver("loopback")
    for set_id in set_ids:
        async with await driver.instance_set(
            {"state_dir": str(state_dir)}, cloudvm.InstanceSetID(set_id), {}, logging.getLogger()
        ) as instance_set:
            for instance in await instance_set.instances():
                await instance.destroy()


async def test_cleanup_destroys_what_the_crashed_run_left(
    example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    state_dir = tmp_path / "cloud"
    config = tmp_path / "loopback.json"
    config.write_text(json.dumps({"state_dir": str(state_dir)}))
    with anyio.fail_after(60):
        crashed = await anyio.run_process(
            [sys.executable, "-c", CRASHING_RUN, str(state_dir)], check=False
        )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    first, second, bystander = crashed.stdout.decode().split()
    cleanup = example("cleanup_after_crash")
    args = ["--driver", "loopback", "--config", str(config), "--set-id", "crashed-run"]
    try:
        # Looking destroys nothing.
        assert sorted(await cleanup.main(args)) == sorted([first, second])
        assert await cleanup.main([*args, "--tag", "run=2"]) == [second]
        assert await listed(state_dir, "crashed-run") == sorted([first, second])

        destroyed = await cleanup.main([*args, "--destroy", "--poll-interval", "0.05"])
        assert sorted(destroyed) == sorted([first, second])
        assert await listed(state_dir, "crashed-run") == []
        assert await listed(state_dir, "bystander") == [bystander]  # untouched
    finally:
        await destroy_every_instance(state_dir, "crashed-run", "bystander")
    await wait_until(lambda: not processes_mentioning(str(state_dir)), timeout=60)
