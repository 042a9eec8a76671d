"""Find and destroy what a crashed run left behind, by its InstanceSetID.

Every instance cloudvm creates carries its InstanceSet's id from birth, even
when the create call itself was cancelled or lost its answer. So when a
dispatcher dies before its cleanup runs (``kill -9``, a lost machine, a
crash), an InstanceSet made with the same id, on any machine, lists what it
left, and nothing else: a set never lists or touches another set's instances.

Look first::

    python examples/cleanup_after_crash.py --driver ec2 \\
        --config examples/config/ec2.yaml --set-id example-fleet

then destroy, and re-list until none is left::

    python examples/cleanup_after_crash.py --driver ec2 \\
        --config examples/config/ec2.yaml --set-id example-fleet --destroy

``--tag K=V`` (repeatable) narrows it to instances with all those tags, such
as one run's ``run=...`` tag. The ``cloudvm`` command does the same with
``cloudvm list`` and ``cloudvm destroy --all-with-tag``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import anyio
from fleet import load_config

import cloudvm
from cloudvm.driverkit import printable


def tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} must look like key=value")
    return key, value


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--driver", required=True, help="ec2, gce, azure, loopback, ...")
    parser.add_argument("--config", type=Path, help="the driver's config (YAML or JSON)")
    parser.add_argument("--set-id", required=True, help="the crashed run's InstanceSetID")
    parser.add_argument("--tag", type=tag, action="append", default=[], metavar="K=V")
    parser.add_argument("--destroy", action="store_true", help="destroy what is found")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for destroys")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between listings")
    return parser.parse_args(argv)


async def main(
    argv: Sequence[str] | None = None, *, driver: cloudvm.Driver | None = None
) -> list[cloudvm.InstanceID]:
    """Run with the command line ``argv`` (None: ``sys.argv``) on ``driver``
    (None: the installed driver ``--driver`` names). Returns the ids of the
    instances found (and, with ``--destroy``, destroyed)."""
    args = arguments(argv)
    config = load_config(args.config) if args.config else {}
    tags = dict(args.tag)
    logger = logging.getLogger("example.cleanup")
    inner = await (driver or cloudvm.load_driver(args.driver)).instance_set(
        config, cloudvm.InstanceSetID(args.set_id), {}, logger
    )
    async with cloudvm.resilient(inner) as instance_set:
        # Listings may repeat an instance; ids are what identify them.
        found = {i.id: i for i in await instance_set.instances(tags or None)}
        for instance in found.values():
            # Tags and addresses come from the cloud account: shown escaped.
            shown_tags = ",".join(f"{k}={v}" for k, v in sorted(instance.tags.items()))
            print(printable(f"{instance.id}  {instance.address or '-'}  {shown_tags}", limit=500))
        print(f"{len(found)} instances in set {printable(args.set_id)}")
        if not args.destroy or not found:
            if found:
                print("run again with --destroy to destroy them")
            return list(found)
        for instance in found.values():
            await instance.destroy()
            print(f"destroying {printable(instance.id)}")
        with anyio.fail_after(args.timeout):
            while left := [i for i in await instance_set.instances(tags or None) if i.id in found]:
                print(f"{len(left)} still listed")
                await anyio.sleep(args.poll_interval)
        print("all destroyed; none is listed")
    return list(found)


if __name__ == "__main__":
    asyncio.run(main())
