"""A dispatcher: a queue of shell jobs run on a fleet kept by cloudvm's WorkerPool.

By default it runs on the in-memory fake cloud with a real in-process SSH
server behind every instance (host keys proven through the instance metadata
service), and the cloud misbehaves: 10% of creates and destroys fail, some
responses are lost, one instance type has no capacity, and the account has a
quota. Every job runs exactly once; at the end the fleet is drained and no
instance is left.

    python examples/dispatcher.py [--jobs 200]
    python examples/dispatcher.py --driver loopback --config loopback.json
    python examples/dispatcher.py --driver ec2 --config ec2.json

``--config`` is a JSON file ``{"driver": {...}, "pool": {...}}``: the
driver's config (see its README) and the pool's (``PoolConfig`` fields:
``instance_types`` as objects, ``image_id``, ...). It prints a progress bar on
a terminal, plain lines otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncssh

import cloudvm
from cloudvm.testing import FakeCloud

SMALL = cloudvm.InstanceType(
    name="small",
    provider_type="fake.small",
    vcpus=1,
    ram=1 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.01,
)
LARGE = cloudvm.InstanceType(
    name="large",
    provider_type="fake.large",
    vcpus=4,
    ram=8 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.08,
)
FAKE_CLOUD = {
    "ssh": True,
    "failure_rates": {"create": 0.1, "destroy": 0.1},
    "lost_responses": {"create": 0.05, "destroy": 0.05},
    "capacity_shortage": {"instance_types": ["fake.large"]},  # large: none to be had
    "quotas": {"standard": {"instances": 6}},
    "seed": 12,
}
FAKE_POOL: dict[str, Any] = {
    "instance_types": [SMALL, LARGE],
    "image_id": "fake-image",
    "max_instances": 8,
    "max_concurrent_creates": 3,
    "boot_probe_command": "true",
    "probe_interval": 2.0,
    "max_probes_per_second": 50.0,
    "sync_interval": 2.0,
    "timeout_booting": 30.0,
    "timeout_probe": 30.0,
    "timeout_idle": 5.0,
    "timeout_shutdown": 1.0,
}
SCALE_EVERY = 0.2  # seconds between looks at the queue
FALLBACK_AFTER = 3.0  # seconds a job waits for its type before looking for another


class Progress:
    """A bar on a terminal, a line per tenth of the jobs otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stdout.isatty()
        self._last_line = -1

    def update(self, pool: cloudvm.WorkerPool) -> None:
        counts = {
            state.value: sum(c[state] for c in pool.counts().values())
            for state in cloudvm.WorkerState
        }
        fleet = " ".join(f"{name}={n}" for name, n in counts.items() if n)
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            print(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"workers: {fleet:<40}",
                end="",
                flush=True,
            )
        elif self.done * 10 // self.total != self._last_line:
            self._last_line = self.done * 10 // self.total
            print(f"{self.done}/{self.total} jobs done; workers: {fleet}", flush=True)

    def finish(self) -> None:
        if self.tty:
            print()


async def run_jobs(
    pool: cloudvm.WorkerPool, jobs: dict[str, tuple[cloudvm.InstanceType, str]]
) -> dict[str, bytes]:
    """Run every job once on a leased worker, asking the pool for workers as
    the queue needs them; returns each job's output."""
    results: dict[str, bytes] = {}
    progress = Progress(len(jobs))
    types = {itype.name: itype for itype in pool.config.instance_types}

    fallback = pool.config.instance_types[0]

    async def run(name: str, itype: cloudvm.InstanceType, command: str) -> None:
        while True:
            try:
                async with pool.lease(itype, timeout=FALLBACK_AFTER) as worker:
                    out, _ = await worker.execute(command)
            except cloudvm.WorkerLost:
                continue  # the worker broke under us: run it elsewhere
            except TimeoutError:
                if pool.at_capacity(itype):
                    itype = fallback  # the cloud has none of this type now
                continue
            results[name] = out
            progress.done += 1
            return

    async with anyio.create_task_group() as tg:
        for name, (itype, command) in jobs.items():
            tg.start_soon(run, name, itype, command)
        while len(results) < len(jobs):
            waiting, unallocated = pool.waiting(), pool.unallocated()
            for type_name, itype in types.items():
                for _ in range(waiting[type_name] - unallocated[type_name]):
                    if not pool.create(itype):
                        break  # at quota, capacity, a hold or max_instances
            progress.update(pool)
            await anyio.sleep(SCALE_EVERY)
    progress.update(pool)
    progress.finish()
    return results


def make_jobs(count: int, types: Sequence[cloudvm.InstanceType]) -> dict[str, Any]:
    # The last type gets every fourth job; on the fake it has no capacity, so
    # those jobs fall back to the first type.
    jobs = {}
    for n in range(count):
        itype = types[-1] if n % 4 == 3 and len(types) > 1 else types[0]
        jobs[f"job{n}"] = (itype, f"echo job {n} on $(hostname) >/dev/null; echo {n}")
    return jobs


async def open_instance_set(
    args: argparse.Namespace, logger: logging.Logger
) -> tuple[cloudvm.InstanceSet, dict[str, Any], FakeCloud | None]:
    if args.config is not None:
        loaded = json.loads(args.config.read_text())
        driver_config, pool_config = loaded.get("driver", {}), loaded["pool"]
    else:
        driver_config, pool_config = {}, dict(FAKE_POOL)
    if args.driver == "fake" and args.config is None:
        cloud = FakeCloud(FAKE_CLOUD)
        return await cloud.instance_set(cloudvm.InstanceSetID(args.set_id)), pool_config, cloud
    driver = cloudvm.load_driver(args.driver)
    instance_set = await driver.instance_set(
        driver_config, cloudvm.InstanceSetID(args.set_id), {}, logger
    )
    return instance_set, pool_config, None


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="how many jobs (default 200)")
    parser.add_argument("--driver", default="fake", help="a cloudvm driver (default fake)")
    parser.add_argument("--config", type=Path, help='JSON {"driver": {...}, "pool": {...}}')
    parser.add_argument("--set-id", default="dispatcher-example", help="the InstanceSetID")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the pool's decisions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    logger = logging.getLogger("dispatcher")
    started = time.monotonic()
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance_set, pool_config, cloud = await open_instance_set(args, logger)
    try:
        async with (
            instance_set,
            cloudvm.WorkerPool(instance_set, pool_config, signers=[key]) as pool,
        ):
            types = list(pool.config.instance_types)
            jobs = make_jobs(args.jobs, types)
            results = await run_jobs(pool, jobs)
            await pool.drain()
            left = await pool.instance_set.instances()
    finally:
        if cloud is not None:
            await cloud.close()
    wrong = [name for name, out in results.items() if out.strip() != name[3:].encode()]
    print(
        f"{len(results)}/{len(jobs)} jobs done ({len(wrong)} wrong), "
        f"{len(left)} instances left, {time.monotonic() - started:.1f} s"
    )
    return 0 if len(results) == len(jobs) and not wrong and not left else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
