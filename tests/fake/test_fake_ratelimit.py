"""Token buckets per kind of call, answering RateLimitError honestly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from cloudvm import RateLimitError
from cloudvm.testing import FakeCloud, ManualClock

from ._util import SET_A, create


def ec2_shaped_cloud() -> tuple[FakeCloud, ManualClock]:
    clock = ManualClock()
    return FakeCloud(clock=clock), clock  # the default buckets: create burst 5, +2/s


async def test_create_bucket_allows_the_burst_then_says_when_the_next_token_comes() -> None:
    cloud, clock = ec2_shaped_cloud()
    instance_set = await cloud.instance_set(SET_A)
    for _ in range(5):
        await create(instance_set)
    with pytest.raises(RateLimitError) as caught:
        await create(instance_set)
    # Refill 2/s: the next token arrives half a second from now.
    assert caught.value.earliest_retry == clock.wall() + timedelta(seconds=0.5)
    assert caught.value.code == "RequestLimitExceeded"
    assert len(cloud.instance_ids()) == 5  # a throttled call has no effect


async def test_bucket_refills_at_its_rate() -> None:
    cloud, clock = ec2_shaped_cloud()
    instance_set = await cloud.instance_set(SET_A)
    for _ in range(5):
        await create(instance_set)
    clock.advance(0.4)
    with pytest.raises(RateLimitError) as caught:
        await create(instance_set)
    assert caught.value.earliest_retry == clock.wall() + timedelta(seconds=0.1)
    clock.advance(0.1)
    await create(instance_set)  # exactly when promised
    clock.advance(10)  # refills up to the burst, no further
    for _ in range(5):
        await create(instance_set)
    with pytest.raises(RateLimitError):
        await create(instance_set)
    outcomes = [call.outcome for call in cloud.calls]
    assert outcomes.count("RateLimitError") == 2
    assert outcomes.count("ok") == 11


async def test_kinds_have_separate_buckets() -> None:
    clock = ManualClock()
    cloud = FakeCloud(
        {"rate_limits": {"create": {"burst": 1, "refill": 1}, "list": {"burst": 2, "refill": 4}}},
        clock=clock,
    )
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set)
    with pytest.raises(RateLimitError):
        await create(instance_set)
    await instance_set.instances()
    await instance_set.instances()
    with pytest.raises(RateLimitError) as caught:
        await instance_set.instances()
    assert caught.value.earliest_retry == clock.wall() + timedelta(seconds=0.25)
    # "other" (set_tags, destroy) keeps its default bucket, untouched so far.
    await instance.set_tags({"a": "b"})
    await instance.destroy()


async def test_a_kind_set_to_none_and_no_rate_limits_never_throttle() -> None:
    cloud = FakeCloud({"rate_limits": {"create": None}}, clock=ManualClock())
    instance_set = await cloud.instance_set(SET_A)
    for _ in range(50):
        await create(instance_set)
    cloud.configure(rate_limits=None)
    for _ in range(500):
        await instance_set.instances({"x": "y"})
    assert all(call.outcome == "ok" for call in cloud.calls)


async def test_reconfigured_buckets_start_full() -> None:
    cloud, _ = ec2_shaped_cloud()
    instance_set = await cloud.instance_set(SET_A)
    for _ in range(5):
        await create(instance_set)
    cloud.configure(rate_limits={"create": {"burst": 3, "refill": 1}})
    for _ in range(3):
        await create(instance_set)
    with pytest.raises(RateLimitError):
        await create(instance_set)


async def test_earliest_retry_is_honest_on_the_real_clock() -> None:
    cloud = FakeCloud({"rate_limits": {"create": {"burst": 1, "refill": 20}}})
    instance_set = await cloud.instance_set(SET_A)
    await create(instance_set)
    before = datetime.now(UTC)
    with pytest.raises(RateLimitError) as caught:
        await create(instance_set)
    after = datetime.now(UTC)
    earliest = caught.value.earliest_retry
    assert before < earliest <= after + timedelta(seconds=0.05)  # refill 20/s
    await anyio.sleep((earliest - datetime.now(UTC)).total_seconds() + 0.01)
    await create(instance_set)
