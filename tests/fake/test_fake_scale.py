"""10,000 instances without SSH or throttling."""

from __future__ import annotations

from cloudvm.testing import FakeCloud

from ._util import SET_A, SET_B, create


async def test_ten_thousand_instances_are_created_and_listed_by_tags() -> None:
    cloud = FakeCloud({"rate_limits": None})
    instance_set = await cloud.instance_set(SET_A)
    other = await cloud.instance_set(SET_B)
    for n in range(10_000):
        await create(instance_set, tags={"shard": str(n % 10), "n": str(n)})
    await create(other, tags={"shard": "3"})
    assert len(await instance_set.instances()) == 10_000
    shard = await instance_set.instances({"shard": "3"})
    assert len(shard) == 1_000
    assert all(instance.tags["shard"] == "3" for instance in shard)
    (one,) = await instance_set.instances({"shard": "3", "n": "4243"})
    assert one.tags == {"shard": "3", "n": "4243"}
    # Many selective listings stay cheap: they use the tag index.
    for n in range(0, 10_000, 10):
        assert len(await instance_set.instances({"n": str(n)})) == 1
    assert await instance_set.instances({"shard": "3", "n": "4244"}) == []
    assert len(await other.instances({"shard": "3"})) == 1
