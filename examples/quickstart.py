"""The whole lifecycle on the loopback cloud, which needs no account and no root.

Creates three instances with tags, waits until they boot, verifies each host
key through the instance's metadata service (over the SSH connection itself),
runs commands on all three at once, re-tags one, lists by tags, and destroys
everything. Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence

import anyio
import asyncssh

import cloudvm

INSTANCE_TYPE = cloudvm.InstanceType(
    name="small",
    provider_type="loopback.small",
    vcpus=1,
    ram=512 * 2**20,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.0,
)
BOOT_TIMEOUT = 30.0  # seconds


async def wait_for_boot(
    instance_set: cloudvm.InstanceSet, ids: set[cloudvm.InstanceID]
) -> dict[cloudvm.InstanceID, cloudvm.Instance]:
    """Re-list (gently) until every instance in ``ids`` has an address."""
    with anyio.fail_after(BOOT_TIMEOUT):
        while True:
            booted = {i.id: i for i in await instance_set.instances() if i.id in ids and i.address}
            if booted.keys() == ids:
                return booted
            await anyio.sleep(0.1)


async def run_everywhere(
    instances: list[cloudvm.Instance], key: asyncssh.SSHKey, cmd: str
) -> dict[cloudvm.InstanceID, str]:
    results: dict[cloudvm.InstanceID, str] = {}

    async def run_one(instance: cloudvm.Instance) -> None:
        async with cloudvm.SSHExecutor(instance, signers=[key]) as executor:
            stdout, _ = await executor.execute(cmd, env={"GREETING": "hello from"})
            results[instance.id] = stdout.decode().strip()

    async with anyio.create_task_group() as tg:
        for instance in instances:
            tg.start_soon(run_one, instance)
    return results


def show(title: str, rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for n, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    key = asyncssh.generate_private_key("ssh-ed25519")
    with tempfile.TemporaryDirectory(prefix="cloudvm-demo-") as state_dir:
        driver = cloudvm.load_driver("loopback")
        async with await driver.instance_set(
            {"state_dir": state_dir, "max_instances": 5},
            cloudvm.InstanceSetID("demo"),
            {"owner": "quickstart"},
            logging.getLogger("demo"),
        ) as instance_set:

            async def destroy_everything() -> None:
                for instance in await instance_set.instances():
                    await instance.destroy()

            try:
                created = [
                    await instance_set.create(
                        INSTANCE_TYPE,
                        cloudvm.ImageID("local"),
                        {"role": "worker", "index": str(n)},
                        cloudvm.InitCommand("echo booted > boot-marker"),
                        key.convert_to_public(),
                    )
                    for n in range(3)
                ]
                print(f"created {', '.join(str(i) for i in created)}")
                booted = await wait_for_boot(instance_set, {i.id for i in created})
                instances = [booted[i.id] for i in created]
                # Each executor verifies its host through the metadata tunnel
                # before the first command runs.
                outputs = await run_everywhere(
                    instances,
                    key,
                    'echo "$GREETING $(hostname) in $(basename $PWD)"; cat boot-marker',
                )
                show(
                    "ran on all three at once (host keys verified through the metadata tunnel):",
                    [("instance", "address", "tags", "output")]
                    + [
                        (
                            str(i),
                            i.address,
                            ",".join(f"{k}={v}" for k, v in sorted(i.tags.items())),
                            outputs[i.id].replace("\n", " | "),
                        )
                        for i in instances
                    ],
                )
                await instances[0].set_tags({"role": "leader", "index": "0"})
                leaders = await instance_set.instances({"role": "leader"})
                workers = await instance_set.instances({"role": "worker"})
                show(
                    "after re-tagging the first instance:",
                    [
                        ("role", "instances"),
                        ("leader", " ".join(str(i) for i in leaders)),
                        ("worker", " ".join(str(i) for i in workers)),
                    ],
                )
            finally:
                # Runs to its end even when Ctrl-C (asyncio's Task.cancel) or
                # a timeout cancels main meanwhile: nothing is left running.
                await cloudvm.run_critical(destroy_everything)
            left = await instance_set.instances()
    print(
        f"\ndestroyed everything; {len(left)} instances left; "
        f"took {time.monotonic() - started:.1f}s"
    )
    if left:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
