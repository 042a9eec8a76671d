"""A dispatcher's own tests against FakeCloud's faults, under pytest-asyncio.

Run with ``pytest`` (``asyncio_mode = "auto"``, or mark each test with
``@pytest.mark.asyncio``).
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

import cloudvm
from cloudvm.testing import FakeCloud, ManualClock

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


# --- the dispatcher under test (yours would live in your package) -------------


async def provision(instance_set: cloudvm.InstanceSet, count: int, batch: str) -> None:
    """Make sure ``count`` instances tagged ``batch`` exist. A create whose
    answer was lost may still have made its instance, so each slot has its own
    tag and is created again only if a listing does not show it."""
    for slot in range(count):
        tags = {"batch": batch, "slot": str(slot)}
        while not await instance_set.instances(tags):
            try:
                await instance_set.create(
                    SMALL, cloudvm.ImageID("img"), tags, cloudvm.InitCommand(""), None
                )
            except cloudvm.QuotaError:
                raise  # retrying is pointless until something is destroyed
            except cloudvm.CloudError:
                continue  # failed or lost: look before trying again


async def wait_booted(
    instance_set: cloudvm.InstanceSet,
    batch: str,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> list[cloudvm.Instance]:
    """Re-list every 5 s until every instance of ``batch`` has an address."""
    while True:
        instances = await instance_set.instances({"batch": batch})
        if instances and all(instance.address for instance in instances):
            return instances
        await sleep(5)


# --- the tests ---------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cloud(clock: ManualClock) -> AsyncIterator[FakeCloud]:
    # No throttling unless a test asks for it; time moves only when told.
    async with FakeCloud({"rate_limits": None}, clock=clock) as cloud:
        yield cloud


async def test_lost_and_failed_creates_make_exactly_one_instance_per_slot(
    cloud: FakeCloud,
) -> None:
    cloud.configure(lost_responses={"create": 0.4}, failure_rates={"create": 0.2}, seed=7)
    instance_set = await cloud.instance_set(cloudvm.InstanceSetID("dispatcher"))
    await provision(instance_set, 10, batch="b1")
    slots = [i.tags["slot"] for i in await instance_set.instances({"batch": "b1"})]
    assert sorted(slots, key=int) == [str(n) for n in range(10)]
    outcomes = {call.outcome for call in cloud.calls if call.operation == "create"}
    assert {"LostResponseError", "InjectedError"} <= outcomes  # the faults did happen


async def test_quota_stops_provisioning(cloud: FakeCloud) -> None:
    cloud.configure(quotas={"standard": {"instances": 3}})
    instance_set = await cloud.instance_set(cloudvm.InstanceSetID("dispatcher"))
    with pytest.raises(cloudvm.QuotaError):
        await provision(instance_set, 5, batch="b1")
    assert len(cloud.instance_ids()) == 3


async def test_waits_until_every_instance_has_booted(cloud: FakeCloud, clock: ManualClock) -> None:
    cloud.configure(boot_delay=12)
    instance_set = await cloud.instance_set(cloudvm.InstanceSetID("dispatcher"))
    await provision(instance_set, 2, batch="b1")
    booted: list[cloudvm.Instance] = []

    async def waiter() -> None:
        booted.extend(await wait_booted(instance_set, "b1", sleep=clock.sleep))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        for _ in range(3):  # 5 s, 10 s: not yet; 15 s: booted
            with anyio.fail_after(10):  # a deadline for the test, not a timing assert
                while clock.sleepers == 0:
                    await anyio.lowlevel.checkpoint()
            assert not booted
            clock.advance(5)
    assert [bool(i.address) for i in booted] == [True, True]
