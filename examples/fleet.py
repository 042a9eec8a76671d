"""What every fleet example does, the same on every cloud.

``ec2_fleet.py``, ``gce_fleet.py`` and ``azure_fleet.py`` differ only in the
driver, its config file, the instance type and the image; the fleet itself is
this module's :func:`run_fleet`, written once against cloudvm's contract:

1. create ``count`` instances at once, tagged with the run's own id, through
   ``cloudvm.resilient`` (so throttling is waited out politely);
2. re-list, gently, until every one of them has an address;
3. run a command on all of them at once over SSH: each ``SSHExecutor``
   proves its host (the host key, checked through the instance's own
   metadata service) before the command runs;
4. whatever happened (an error, Ctrl-C), destroy every instance carrying the
   run's tag, including any that a failed create made anyway, and re-list
   until none is left.

If the process itself dies, nothing destroys them: ``cleanup_after_crash.py``
finds them again by the set id.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncssh

import cloudvm

CONFIG_DIR = Path(__file__).parent / "config"
DEFAULT_SET_ID = "example-fleet"


def instance_type(
    provider_type: str, *, vcpus: int, ram: int, price: float
) -> cloudvm.InstanceType:
    """What a dispatcher knows of a type (``ram`` in bytes, ``price`` per
    hour); only ``provider_type`` reaches the cloud."""
    return cloudvm.InstanceType(
        name=provider_type,
        provider_type=provider_type,
        vcpus=vcpus,
        ram=ram,
        scratch=0,
        included_scratch=0,
        added_scratch=0,
        price=price,
    )


async def main(
    cloud: str,
    description: str | None,
    argv: Sequence[str] | None,
    driver: cloudvm.Driver | None,
    *,
    itype: cloudvm.InstanceType,
    image: str,
) -> dict[cloudvm.InstanceID, str]:
    """A cloud's fleet example: its command line ``argv`` (None: sys.argv),
    its config file, then :func:`run_fleet` on ``driver`` (None: the
    installed driver named ``cloud``). Returns each instance's output."""
    args = arguments(description, argv, cloud=cloud, instance_type=itype.provider_type, image=image)
    if args.type != itype.provider_type:
        itype = dataclasses.replace(itype, name=args.type, provider_type=args.type)
    config = load_config(args.config)
    return await run_fleet(driver or cloudvm.load_driver(cloud), config, itype, args)


def load_config(path: Path) -> dict[str, Any]:
    """A driver's config from a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped]  # pip install pyyaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path} must hold a mapping of config keys")
    return data


def arguments(
    description: str | None,
    argv: Sequence[str] | None,
    *,
    cloud: str,
    instance_type: str,
    image: str,
) -> argparse.Namespace:
    """The command line every fleet example takes (``argv``; None: sys.argv)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIG_DIR / f"{cloud}.yaml",
        help="the driver's config (default: %(default)s, which documents every key)",
    )
    parser.add_argument("--type", default=instance_type, help="default: %(default)s")
    parser.add_argument("--image", default=image, help="default: %(default)s")
    parser.add_argument("--count", type=int, default=2, help="instances (default: 2)")
    parser.add_argument("--set-id", default=DEFAULT_SET_ID, help="default: %(default)s")
    parser.add_argument("--command", default="uname -a", help="what to run on each instance")
    parser.add_argument("--boot-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between listings")
    return parser.parse_args(argv)


async def run_fleet(
    driver: cloudvm.Driver,
    config: Mapping[str, Any],
    itype: cloudvm.InstanceType,
    args: argparse.Namespace,
) -> dict[cloudvm.InstanceID, str]:
    """Create, boot, prove and run, destroy (see the module docstring).

    Returns each instance's output of ``args.command``. Raises what went
    wrong, after the cleanup.
    """
    logger = logging.getLogger("example.fleet")
    key = asyncssh.generate_private_key("ssh-ed25519")  # this run's login key
    tags = {"example": "fleet", "run": secrets.token_hex(4)}
    image = cloudvm.ImageID(args.image)
    inner = await driver.instance_set(
        config, cloudvm.InstanceSetID(args.set_id), {"example": "fleet"}, logger
    )
    async with cloudvm.resilient(inner) as instance_set:
        try:
            created = await create_all(instance_set, itype, image, tags, key, args.count)
            booted = await wait_for_boot(instance_set, created, args)
            return await run_on_all(booted, key, args.command)
        finally:
            # To its end even if main is cancelled meanwhile (Ctrl-C is
            # asyncio's Task.cancel): a half-done clean-up costs money.
            await cloudvm.run_critical(lambda: destroy_all(instance_set, tags, args))


async def create_all(
    instance_set: cloudvm.InstanceSet,
    itype: cloudvm.InstanceType,
    image: cloudvm.ImageID,
    tags: cloudvm.InstanceTags,
    key: asyncssh.SSHKey,
    count: int,
) -> set[cloudvm.InstanceID]:
    created: set[cloudvm.InstanceID] = set()

    async def create_one() -> None:
        try:
            instance = await instance_set.create(
                itype, image, tags, cloudvm.InitCommand(""), key.convert_to_public()
            )
        except cloudvm.CloudError as exc:
            # It may exist anyway (tagged from birth): the cleanup finds it.
            print(f"a create failed: {type(exc).__name__}: {exc}")
            return
        created.add(instance.id)
        print(f"created {instance} ({instance.provider_type})")

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(create_one)
    if not created:
        raise RuntimeError("no create succeeded")
    return created


async def wait_for_boot(
    instance_set: cloudvm.InstanceSet, ids: set[cloudvm.InstanceID], args: argparse.Namespace
) -> list[cloudvm.Instance]:
    """Re-list every ``poll_interval`` seconds until each of ``ids`` has an address."""
    started = time.monotonic()
    with anyio.fail_after(args.boot_timeout):
        while True:
            listed = {i.id: i for i in await instance_set.instances() if i.id in ids}
            if listed.keys() == ids and all(i.address for i in listed.values()):
                print(f"all {len(ids)} booted after {time.monotonic() - started:.0f} s")
                return list(listed.values())
            await anyio.sleep(args.poll_interval)


async def run_on_all(
    instances: list[cloudvm.Instance], key: asyncssh.SSHKey, command: str
) -> dict[cloudvm.InstanceID, str]:
    outputs: dict[cloudvm.InstanceID, str] = {}

    async def run_one(instance: cloudvm.Instance) -> None:
        # The executor proves the host before the command runs, or raises
        # HostKeyError and runs nothing.
        async with cloudvm.SSHExecutor(instance, signers=[key]) as executor:
            stdout, _ = await executor.execute(command, timeout=60)
        outputs[instance.id] = stdout.decode(errors="replace").strip()
        print(f"{instance} at {instance.address}: {outputs[instance.id]}")

    async with anyio.create_task_group() as tg:
        for instance in instances:
            tg.start_soon(run_one, instance)
    return outputs


async def destroy_all(
    instance_set: cloudvm.InstanceSet, tags: cloudvm.InstanceTags, args: argparse.Namespace
) -> None:
    """Destroy every instance with the run's tags, then re-list until none is
    (a create whose response was lost may show its instance late)."""
    destroyed: set[cloudvm.InstanceID] = set()
    with anyio.fail_after(args.boot_timeout):
        while listed := await instance_set.instances(tags):
            for instance in listed:
                if instance.id not in destroyed:
                    await instance.destroy()
                    destroyed.add(instance.id)
            await anyio.sleep(args.poll_interval)
    print(f"destroyed {len(destroyed)} instances; none is left")
