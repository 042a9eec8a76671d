"""Each timeout acts exactly at its boundary, not a moment before."""

from __future__ import annotations

from cloudvm.pool import WorkerPool, WorkerState
from cloudvm.testing import FakeCloud

from ._support import (
    BROKEN,
    SET,
    SMALL,
    FakeHosts,
    SimClock,
    make_config,
    make_pool,
    run_to,
    run_until,
    seconds_since,
    sim_cloud,
    states,
)

EPSILON = 0.001


def _destroys(cloud: FakeCloud) -> int:
    return sum(1 for call in cloud.calls if call.operation == "destroy")


async def _idle_worker(pool: WorkerPool, clock: SimClock) -> None:
    assert pool.create(SMALL)
    await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1})


async def test_timeout_booting_destroys_a_silent_worker_at_its_boundary() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock, hang_types={BROKEN.provider_type})
    config = make_config(timeout_booting=300.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        created = clock.now()
        assert pool.create(BROKEN)
        await run_to(clock, created + 300.0 - EPSILON)
        assert states(pool, "broken") == {WorkerState.BOOTING: 1}
        assert _destroys(cloud) == 0
        await run_to(clock, created + 300.0)
        (destroy,) = [call for call in cloud.calls if call.operation == "destroy"]
        assert destroy.called == created + 300.0
        await run_until(clock, lambda: not pool.workers())
        assert cloud.instance_ids(SET) == []


async def test_timeout_probe_counts_from_the_last_good_probe() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    config = make_config(timeout_probe=120.0, timeout_idle=10_000.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        await _idle_worker(pool, clock)
        await run_to(clock, clock.now() + 25.0)  # a few good probes
        (worker,) = pool.workers()
        assert worker.last_probe is not None
        last_ok = clock.now() - seconds_since(clock, worker.last_probe)
        hosts.refuse.add(worker.id)
        await run_to(clock, last_ok + 120.0 - EPSILON)
        assert states(pool) == {WorkerState.IDLE: 1}
        await run_to(clock, last_ok + 120.0)
        (destroy,) = [call for call in cloud.calls if call.operation == "destroy"]
        assert destroy.called == last_ok + 120.0


async def test_a_probe_that_passes_in_time_resets_timeout_probe() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    config = make_config(timeout_probe=120.0, timeout_idle=10_000.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        await _idle_worker(pool, clock)
        (worker,) = pool.workers()
        hosts.refuse.add(worker.id)
        await run_to(clock, clock.now() + 100.0)
        hosts.refuse.discard(worker.id)
        await run_to(clock, clock.now() + 200.0)
        assert states(pool) == {WorkerState.IDLE: 1}


async def test_timeout_idle_destroys_an_unleased_worker_at_its_boundary() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    config = make_config(timeout_idle=60.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        await _idle_worker(pool, clock)
        async with pool.lease(SMALL):
            await run_to(clock, clock.now() + 100.0)  # leased: never idle-timed
        idle_since = clock.now()
        await run_to(clock, idle_since + 60.0 - EPSILON)
        assert states(pool) == {WorkerState.IDLE: 1}
        await run_to(clock, idle_since + 60.0)
        (destroy,) = [call for call in cloud.calls if call.operation == "destroy"]
        assert destroy.called == idle_since + 60.0
        await run_until(clock, lambda: not pool.workers())
        assert cloud.instance_ids(SET) == []


async def test_timeout_shutdown_repeats_a_failed_destroy_until_the_instance_is_gone() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    config = make_config(timeout_shutdown=10.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        await _idle_worker(pool, clock)
        cloud.configure(failure_rates={"destroy": 1.0})
        cloud.clear_calls()
        asked = clock.now()
        assert pool.shutdown(SMALL)
        await run_to(clock, asked)
        assert _destroys(cloud) == 1
        await run_to(clock, asked + 10.0 - EPSILON)
        assert _destroys(cloud) == 1
        await run_to(clock, asked + 10.0)
        assert _destroys(cloud) == 2
        await run_to(clock, asked + 30.0)
        assert _destroys(cloud) == 4
        assert states(pool) == {WorkerState.SHUTDOWN: 1}
        cloud.configure(failure_rates={"destroy": 0.0})
        await run_until(clock, lambda: not pool.workers())
        assert cloud.instance_ids(SET) == []
