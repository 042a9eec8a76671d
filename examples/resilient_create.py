"""What a dispatcher sees when the cloud throttles, is at quota, or has no capacity.

Three short scenes on the in-memory fake cloud (no account, nothing to
install), each through ``cloudvm.resilient``, the wrapper that holds off a
throttled kind of call, never retries a quota error and remembers capacity
shortages:

1. throttling: ten creates at once against a token bucket of three. The
   wrapper sends few at a time; the caller whose call was throttled gets the
   RateLimitError (with the provider's retry time), everyone else waits out
   the hold-off and then goes. Few calls reach the throttled API.
2. quota: creates past a quota of three instances. The first refused create
   reaches the cloud; the next is refused by the wrapper without a call, until
   an instance is destroyed.
3. capacity: a type the cloud has none of. The shortage is remembered for
   that type only; another type is created at once.

For each scene it prints what every create returned or raised, next to what
reached the cloud (the fake cloud's call log). Run it with
``python examples/resilient_create.py`` (add ``-v`` to see the wrapper's own
log of each decision).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

import cloudvm
from cloudvm.testing import FakeCloud


def itype(provider_type: str) -> cloudvm.InstanceType:
    return cloudvm.InstanceType(
        name=provider_type,
        provider_type=provider_type,
        vcpus=2,
        ram=4 * 2**30,
        scratch=0,
        included_scratch=0,
        added_scratch=0,
        price=0.05,
    )


SMALL = itype("small")
BIG = itype("big")
IMAGE = cloudvm.ImageID("image-1")
NO_THROTTLING = {"create": None, "list": None, "other": None}


@dataclasses.dataclass
class Scene:
    """What one scene's creates returned, and what reached the cloud."""

    outcomes: list[str] = dataclasses.field(default_factory=list)  # what each step saw
    cloud_calls: Counter[str] = dataclasses.field(default_factory=Counter)  # create outcomes

    def show(self, title: str) -> None:
        print(f"\n{title}")
        for outcome in self.outcomes:
            print(f"  {outcome}")
        calls = ", ".join(
            f"{count} {outcome}" for outcome, count in sorted(self.cloud_calls.items())
        )
        print(f"  the cloud saw {sum(self.cloud_calls.values())} create calls: {calls}")


def seen(outcome: cloudvm.Instance | BaseException) -> str:
    """One create's outcome, as a dispatcher would log it."""
    if isinstance(outcome, cloudvm.RateLimitError):
        wait = (outcome.earliest_retry - datetime.now(UTC)).total_seconds()
        return f"RateLimitError: retry in {max(wait, 0):.1f} s"
    if isinstance(outcome, cloudvm.CapacityError):
        which = "this type" if outcome.instance_type_specific else "every type"
        return f"CapacityError for {which}: {outcome}"
    if isinstance(outcome, BaseException):
        return f"{type(outcome).__name__}: {outcome}"
    return f"created {outcome.id} ({outcome.provider_type})"


async def create(instance_set: cloudvm.InstanceSet, kind: cloudvm.InstanceType) -> str:
    try:
        instance = await instance_set.create(kind, IMAGE, {}, cloudvm.InitCommand(""), None)
    except cloudvm.CloudError as exc:
        return seen(exc)
    return seen(instance)


async def scene(config: Mapping[str, Any], play: Any) -> Scene:
    """Run ``play(instance_set, scene)`` on a fresh fake cloud with ``config``,
    through the resilient wrapper; destroy everything afterwards."""
    result = Scene()
    async with FakeCloud(config) as cloud:
        inner = await cloud.instance_set(cloudvm.InstanceSetID("dispatcher"))
        async with cloudvm.resilient(inner) as instance_set:
            try:
                await play(instance_set, result)
            finally:
                result.cloud_calls.update(c.outcome for c in cloud.calls if c.operation == "create")
                for instance in await instance_set.instances():
                    await instance.destroy()
    return result


async def throttling(instance_set: cloudvm.InstanceSet, result: Scene) -> None:
    outcomes: dict[int, str] = {}

    async def one(n: int) -> None:
        outcomes[n] = f"create {n + 1:2}: {await create(instance_set, SMALL)}"

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(one, n)
    result.outcomes = [outcomes[n] for n in range(10)]


async def quota(instance_set: cloudvm.InstanceSet, result: Scene) -> None:
    for n in range(1, 6):
        result.outcomes.append(f"create {n}: {await create(instance_set, SMALL)}")
    # Destroying an instance through the wrapper lifts its quota hold at once.
    victim = (await instance_set.instances())[0]
    await victim.destroy()
    result.outcomes.append(f"destroy: {victim.id} is gone")
    result.outcomes.append(f"create 6: {await create(instance_set, SMALL)}")


async def capacity(instance_set: cloudvm.InstanceSet, result: Scene) -> None:
    for n, kind in enumerate((BIG, BIG, SMALL), start=1):
        result.outcomes.append(f"create {n} ({kind.name}): {await create(instance_set, kind)}")


async def main() -> dict[str, Scene]:
    """Play the three scenes, print them, and return them (for tests)."""
    started = time.monotonic()
    scenes = {
        "throttling": await scene(
            {"rate_limits": {"create": {"burst": 3, "refill": 2.0}, "list": None, "other": None}},
            throttling,
        ),
        "quota": await scene(
            {"rate_limits": NO_THROTTLING, "quotas": {"standard": {"instances": 3}}}, quota
        ),
        "capacity": await scene(
            {"rate_limits": NO_THROTTLING, "capacity_shortage": {"instance_types": ["big"]}},
            capacity,
        ),
    }
    scenes["throttling"].show("1. ten creates at once, against a bucket of 3 (+2 per second):")
    scenes["quota"].show("2. five creates against a quota of 3, then a destroy and one more:")
    scenes["capacity"].show("3. two creates of a type the cloud has none of, then another type:")
    print(f"\ntook {time.monotonic() - started:.1f} s")
    return scenes


if __name__ == "__main__":
    if "-v" in sys.argv[1:]:
        logging.basicConfig(level=logging.INFO, format="  [%(name)s] %(message)s")
    asyncio.run(main())
