"""Testing your own dispatcher against the fake cloud's faults, with pytest-asyncio.

``Dispatcher`` below stands for your code (it would live in your own
module): it keeps a number of workers running, creating them through
``cloudvm.resilient``. The tests run it against
:class:`cloudvm.testing.FakeCloud`, an in-memory cloud with knobs for the
faults real clouds have (lost responses, failures, throttling, quotas,
capacity shortages), and check what it did through the cloud's call log and
ground truth. No account, no network, a second or two per test.

Run it with ``pytest examples/test_my_dispatcher.py`` (needs pytest and
pytest-asyncio; the tests are marked, so pytest-asyncio's default strict
mode is enough).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import pytest_asyncio

import cloudvm
from cloudvm.testing import FakeCloud, LostResponseError

# -- your dispatcher ------------------------------------------------------------


def instance_type(provider_type: str) -> cloudvm.InstanceType:
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


class Dispatcher:
    """Keeps workers running: tags them with its pool's name, creates them
    (preferred type first) until enough exist, and copes with what clouds do.

    - A create that raised may have created the worker anyway (a lost
      response): re-list by the pool's tag before creating again.
    - RateLimitError: wait until the provider's retry time, then go on.
    - QuotaError: stop asking; run with what exists.
    - CapacityError for one type: try the next type.
    """

    def __init__(
        self,
        instance_set: cloudvm.InstanceSet,
        types: list[cloudvm.InstanceType],
        *,
        pool: str = "workers",
        max_attempts: int = 50,
    ) -> None:
        self.instance_set = cloudvm.resilient(instance_set)
        self.types = types
        self.tags = {"pool": pool}
        self.max_attempts = max_attempts
        self.log = logging.getLogger("dispatcher")

    async def workers(self) -> list[cloudvm.Instance]:
        unique = {i.id: i for i in await self.instance_set.instances(self.tags)}
        return list(unique.values())

    async def scale_to(self, wanted: int) -> list[cloudvm.Instance]:
        """Create workers until ``wanted`` exist (or quota or capacity stop
        it); return the workers that exist."""
        types = list(self.types)
        for _ in range(self.max_attempts):
            workers = await self.workers()
            if len(workers) >= wanted or not types:
                return workers
            try:
                await self.instance_set.create(
                    types[0],
                    cloudvm.ImageID("worker-image"),
                    self.tags,
                    cloudvm.InitCommand(""),
                    None,
                )
            except cloudvm.RateLimitError as exc:
                await anyio.sleep((exc.earliest_retry - datetime.now(UTC)).total_seconds())
            except cloudvm.QuotaError:
                self.log.info("at quota with %d workers", len(workers))
                return await self.workers()
            except cloudvm.CapacityError as exc:
                if not exc.instance_type_specific:
                    return await self.workers()
                types.pop(0)  # no such machines now: try the next type
            except cloudvm.CloudError as exc:
                # It may have worked anyway; the next listing tells.
                self.log.info("create failed (%s); re-listing", exc)
        raise RuntimeError(f"gave up after {self.max_attempts} attempts")

    async def scale_down(self) -> None:
        for worker in await self.workers():
            await worker.destroy()


# -- its tests --------------------------------------------------------------------

SMALL, LARGE = instance_type("small"), instance_type("large")
NO_THROTTLING = {"create": None, "list": None, "other": None}


@pytest_asyncio.fixture
async def make_cloud() -> AsyncIterator[Any]:
    """Make a fake cloud with the given knobs; at the end of the test, check
    that the dispatcher misused nothing and left nothing behind."""
    clouds: list[FakeCloud] = []

    async def make(config: Mapping[str, Any]) -> tuple[FakeCloud, cloudvm.InstanceSet]:
        cloud = FakeCloud({"rate_limits": NO_THROTTLING, **config})
        clouds.append(cloud)
        return cloud, await cloud.instance_set(cloudvm.InstanceSetID("my-dispatcher"))

    yield make
    for cloud in clouds:
        assert cloud.misuses == []
        assert cloud.instance_ids() == [], "the test left instances behind"
        await cloud.close()


def creates(cloud: FakeCloud) -> list[str]:
    """The outcome of every create call that reached the cloud."""
    return [call.outcome for call in cloud.calls if call.operation == "create"]


@pytest.mark.asyncio
async def test_reaches_the_number_wanted(make_cloud: Any) -> None:
    cloud, instance_set = await make_cloud({})
    dispatcher = Dispatcher(instance_set, [SMALL])
    assert len(await dispatcher.scale_to(3)) == 3
    assert creates(cloud) == ["ok", "ok", "ok"]
    await dispatcher.scale_down()


@pytest.mark.asyncio
async def test_lost_responses_make_no_extra_workers(make_cloud: Any) -> None:
    # Every create takes effect, then raises as if the network dropped the answer.
    cloud, instance_set = await make_cloud({"lost_responses": {"create": 1.0}})
    dispatcher = Dispatcher(instance_set, [SMALL])
    assert len(await dispatcher.scale_to(3)) == 3
    assert creates(cloud) == [LostResponseError.__name__] * 3
    assert len(cloud.instance_ids()) == 3  # the cloud's ground truth agrees
    await dispatcher.scale_down()


@pytest.mark.asyncio
async def test_failing_creates_are_retried(make_cloud: Any) -> None:
    cloud, instance_set = await make_cloud({"failure_rates": {"create": 0.5}, "seed": 7})
    dispatcher = Dispatcher(instance_set, [SMALL])
    assert len(await dispatcher.scale_to(4)) == 4
    assert creates(cloud).count("ok") == 4 and "InjectedError" in creates(cloud)
    await dispatcher.scale_down()


@pytest.mark.asyncio
async def test_stops_at_quota_without_hammering(make_cloud: Any) -> None:
    cloud, instance_set = await make_cloud({"quotas": {"standard": {"instances": 2}}})
    dispatcher = Dispatcher(instance_set, [SMALL])
    assert len(await dispatcher.scale_to(5)) == 2
    assert creates(cloud) == ["ok", "ok", "QuotaError"]  # asked once, then stopped
    await dispatcher.scale_down()


@pytest.mark.asyncio
async def test_another_type_when_one_has_no_capacity(make_cloud: Any) -> None:
    cloud, instance_set = await make_cloud({"capacity_shortage": {"instance_types": ["large"]}})
    dispatcher = Dispatcher(instance_set, [LARGE, SMALL])
    workers = await dispatcher.scale_to(2)
    assert sorted(w.provider_type for w in workers) == ["small", "small"]
    assert creates(cloud) == ["CapacityError", "ok", "ok"]
    await dispatcher.scale_down()


@pytest.mark.asyncio
async def test_waits_out_throttling(make_cloud: Any) -> None:
    # A create bucket of 1 call, refilled at 2 calls a second.
    throttled = {"rate_limits": {**NO_THROTTLING, "create": {"burst": 1, "refill": 2.0}}}
    cloud, instance_set = await make_cloud(throttled)
    dispatcher = Dispatcher(instance_set, [SMALL])
    assert len(await dispatcher.scale_to(3)) == 3
    outcomes = creates(cloud)
    assert outcomes.count("ok") == 3
    # Each throttled call was followed by a wait, never by another call at once.
    assert outcomes.count("RateLimitError") <= 2
    await dispatcher.scale_down()
