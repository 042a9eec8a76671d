"""Creates: in the background, never duplicated, refused without a cloud call
while the pool knows they would fail."""

from __future__ import annotations

import dataclasses

import pytest

from cloudvm import ConfigError
from cloudvm.pool import PoolConfig, WorkerPool, WorkerState
from cloudvm.testing import FakeCloud

from ._support import (
    IMAGE,
    LARGE,
    SET,
    SMALL,
    FakeHosts,
    SimClock,
    make_config,
    make_pool,
    run_to,
    run_until,
    sim_cloud,
    states,
)


def _creates(cloud: FakeCloud) -> int:
    return sum(1 for call in cloud.calls if call.operation == "create")


async def test_create_returns_at_once_and_runs_max_concurrent_creates_at_a_time() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, latency={"create": 5.0})
    hosts = FakeHosts(cloud, clock)
    config = make_config(max_concurrent_creates=2)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        assert all(pool.create(SMALL) for _ in range(5))
        assert pool.unallocated()["small"] == 5
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 5})
        calls = [c for c in cloud.calls if c.operation == "create"]
        assert len(calls) == 5
        for call in calls:  # never more than two in flight at once
            overlapping = [
                c for c in calls if c.called < call.finished and call.called < c.finished
            ]
            assert len(overlapping) <= 2


async def test_a_lost_create_response_is_adopted_from_the_next_listing_not_repeated() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, lost_responses={"create": 1.0})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert pool.create(SMALL)
        await run_until(clock, lambda: _creates(cloud) == 1)
        assert [c.outcome for c in cloud.calls if c.operation == "create"] == ["LostResponseError"]
        assert pool.unallocated()["small"] == 1  # still expected: no second create wanted
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1})
        assert _creates(cloud) == 1
        assert [w.id for w in pool.workers()] == cloud.instance_ids(SET)


async def test_a_failed_create_that_made_nothing_is_forgotten_after_a_listing() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, failure_rates={"create": 1.0})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert pool.create(SMALL)
        await run_until(clock, lambda: pool.unallocated()["small"] == 0)
        assert pool.workers() == []
        assert cloud.instance_ids(SET) == []


async def test_at_max_instances_create_returns_false_without_a_cloud_call() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(
        await cloud.instance_set(SET), clock, hosts, make_config(max_instances=2)
    ) as pool:
        assert pool.create(SMALL)
        assert pool.create(LARGE)
        assert not pool.create(SMALL)
        await run_until(clock, lambda: len(pool.workers()) == 2)
        assert not pool.create(SMALL)
        assert _creates(cloud) == 2


async def test_at_quota_create_returns_false_without_a_cloud_call_until_a_destroy() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, quotas={"standard": {"instances": 2}})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert all(pool.create(SMALL) for _ in range(3))
        await run_until(clock, pool.at_quota)
        assert _creates(cloud) == 3
        assert not pool.create(SMALL)
        assert not pool.create(LARGE)  # quota is the account's, not the type's
        assert _creates(cloud) == 3
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 2})
        assert pool.shutdown(SMALL)
        await run_until(clock, lambda: not pool.at_quota())
        assert pool.create(SMALL)


async def test_at_capacity_for_a_type_only_that_type_is_refused() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, capacity_shortage={"instance_types": [LARGE.provider_type]})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert pool.create(LARGE)
        await run_until(clock, lambda: pool.at_capacity(LARGE))
        assert not pool.at_capacity(SMALL)
        before = _creates(cloud)
        assert not pool.create(LARGE)
        assert _creates(cloud) == before
        assert pool.create(SMALL)
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1})
        # The shortage is remembered for the wrapper's capacity_hold (180 s).
        await run_to(clock, clock.now() + 181.0)
        assert not pool.at_capacity(LARGE)


async def test_during_a_create_rate_limit_hold_create_returns_false_without_a_call() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, rate_limits={"create": {"burst": 1, "refill": 0.1}})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert pool.create(SMALL)
        assert pool.create(SMALL)
        await run_until(clock, pool.is_held)
        before = _creates(cloud)
        assert not pool.create(SMALL)
        assert _creates(cloud) == before
        await run_until(clock, lambda: not pool.is_held())
        assert pool.create(SMALL)


async def test_an_instance_type_not_in_the_config_is_refused_with_its_name() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    stranger = dataclasses.replace(SMALL, name="huge")
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        with pytest.raises(ValueError, match="'huge' is not in the pool config"):
            pool.create(stranger)
        with pytest.raises(ValueError, match="'huge' is not in the pool config"):
            pool.lease(stranger)
        with pytest.raises(ValueError, match="'huge'"):
            pool.at_capacity(stranger)
        with pytest.raises(TypeError, match="InstanceType"):
            pool.create("small")  # type: ignore[arg-type]
    assert _creates(cloud) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"probe_interval": 0}, "probe_interval"),
        ({"timeout_booting": -1}, "timeout_booting"),
        ({"max_instances": 0}, "max_instances"),
        ({"instance_types": []}, "instance_types"),
        ({"instance_types": [SMALL, SMALL]}, "instance_types"),
        ({"boot_probe_command": ""}, "boot_probe_command"),
        ({"tags": {"pool-instance-type": "x"}}, "tags"),
        ({"init_command": "x" * 2000}, "init_command"),
        ({"probe_intervall": 5}, "probe_intervall"),
    ],
)
async def test_a_bad_config_names_the_field_before_any_cloud_call(
    change: dict[str, object], field: str
) -> None:
    cloud = sim_cloud(SimClock())
    raw = {"instance_types": [SMALL], "image_id": IMAGE, **change}
    with pytest.raises(ConfigError, match=f"invalid pool config: {field}"):
        WorkerPool(await cloud.instance_set(SET), raw, signers=[])
    with pytest.raises(ValueError, match=field):
        PoolConfig(**raw)  # type: ignore[arg-type]
    assert cloud.calls == []
