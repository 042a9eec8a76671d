"""Twelve creates at once through cloudvm.resilient, on a fake cloud that
throttles creates and allows at most eight instances."""

import asyncio
import collections
import logging

import anyio

import cloudvm
from cloudvm.testing import FakeCloud

SMALL = cloudvm.InstanceType(
    name="small",
    provider_type="t3.small",
    vcpus=2,
    ram=2 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.02,
)


async def main() -> None:
    config = {
        "rate_limits": {"create": {"burst": 3, "refill": 4}, "list": None, "other": None},
        "quotas": {"standard": {"instances": 8}},
    }
    async with FakeCloud(config) as cloud:
        raw = await cloud.instance_set(cloudvm.InstanceSetID("burst"))
        seen: collections.Counter[str] = collections.Counter()
        async with cloudvm.resilient(raw, retry_rate_limited=True, max_wait=30) as instance_set:

            async def one_create(n: int) -> None:
                try:
                    await instance_set.create(
                        SMALL, cloudvm.ImageID("img"), {"n": str(n)}, cloudvm.InitCommand(""), None
                    )
                    seen["created"] += 1
                except cloudvm.QuotaError:
                    seen["QuotaError (no retry)"] += 1
                except cloudvm.RateLimitError:
                    seen["RateLimitError (waited max_wait)"] += 1

            async with anyio.create_task_group() as tg:
                for n in range(12):
                    tg.start_soon(one_create, n)
            print(dict(seen))
            creates = [call for call in cloud.calls if call.operation == "create"]
            throttled = sum(call.outcome == "RateLimitError" for call in creates)
            print(f"{len(creates)} creates reached the cloud, {throttled} of them throttled")
            for instance in await instance_set.instances():
                await instance.destroy()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    asyncio.run(main())
