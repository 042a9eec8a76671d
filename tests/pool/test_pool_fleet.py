"""The fleet as a whole: adoption by a new pool, shards, drain, events, metrics."""

from __future__ import annotations

import prometheus_client
import pytest

from cloudvm import InitCommand, InstanceSetID
from cloudvm.pool import IdleBehavior, PoolEvent, PoolEventKind, WorkerLost, WorkerState

from ._support import (
    BROKEN,
    IMAGE,
    LARGE,
    SET,
    SMALL,
    FakeHosts,
    SimClock,
    drive,
    make_config,
    make_pool,
    run_to,
    run_until,
    settle,
    sim_cloud,
    states,
)


async def test_a_new_pool_adopts_the_fleet_with_types_and_idle_behaviour_from_tags() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock, hang_types={BROKEN.provider_type})
    config = make_config(timeout_booting=300.0, timeout_idle=10_000.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as first:
        for itype in (SMALL, SMALL, LARGE, BROKEN):
            assert first.create(itype)
        await run_until(
            clock,
            lambda: (
                first.counts()["large"][WorkerState.IDLE] == 1
                and first.counts()["small"][WorkerState.IDLE] == 2
            ),
        )
        held = next(w.id for w in first.workers() if w.instance_type == SMALL)
        await first.set_idle_behavior(held, IdleBehavior.HOLD)
        broken_created = clock.now()
    # Instances the pool did not make: one of a type it does not know, one untagged.
    outside = await cloud.instance_set(SET)
    stranger = await outside.create(
        LARGE, IMAGE, {"pool-instance-type": "gpu-huge"}, InitCommand(""), None
    )
    untagged = await outside.create(SMALL, IMAGE, {}, InitCommand(""), None)
    await run_to(clock, clock.now() + 20.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as second:
        assert {w.id for w in second.workers()} >= {held, stranger.id, untagged.id}
        assert second.counts()["small"][WorkerState.UNKNOWN] == 2
        await run_until(
            clock,
            lambda: (
                second.counts()["small"][WorkerState.IDLE] == 2
                and second.counts()["large"][WorkerState.IDLE] == 1
                and stranger.id not in cloud.instance_ids(SET)
                and untagged.id not in cloud.instance_ids(SET)
            ),
        )
        behaviours = {w.id: w.idle_behavior for w in second.workers()}
        assert behaviours[held] is IdleBehavior.HOLD
        # The broken one goes timeout_booting after its creation, not after adoption.
        await run_until(
            clock,
            lambda: (
                second.counts()["broken"][WorkerState.BOOTING] == 0
                and second.counts()["broken"][WorkerState.UNKNOWN] == 0
            ),
        )
        assert clock.now() == pytest.approx(broken_created + 300.0, abs=0.01)


async def test_two_pools_with_different_set_ids_never_touch_each_others_instances() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, failure_rates={"destroy": 0.3}, seed=5)
    hosts = FakeHosts(cloud, clock)
    set_b = InstanceSetID("pool-b")
    async with (
        make_pool(await cloud.instance_set(SET), clock, hosts) as a,
        make_pool(await cloud.instance_set(set_b), clock, hosts) as b,
    ):
        for pool in (a, b):
            assert pool.create(SMALL) and pool.create(LARGE)
        await run_until(
            clock,
            lambda: (
                len(a.workers()) == 2
                and len(b.workers()) == 2
                and all(w.state is WorkerState.IDLE for w in a.workers() + b.workers())
            ),
        )
        b_ids = set(cloud.instance_ids(set_b))
        assert {w.id for w in a.workers()}.isdisjoint(b_ids)
        await drive(clock, a.drain)
        assert cloud.instance_ids(SET) == []
        assert set(cloud.instance_ids(set_b)) == b_ids
        assert {w.id for w in b.workers()} == b_ids
        touched = {c.instance_id for c in cloud.calls if c.set_id == SET}
        assert touched.isdisjoint(b_ids)


async def test_drain_destroys_every_worker_retrying_and_returns_when_listings_show_none() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, failure_rates={"destroy": 0.5}, seed=3)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        for _ in range(4):
            assert pool.create(SMALL)
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 4})
        lost: list[BaseException] = []

        async def leased_job() -> None:
            async with pool.lease(SMALL) as worker:
                try:
                    await worker.execute("job long 10000")
                except WorkerLost as exc:
                    lost.append(exc)

        import anyio

        drained = False

        async def drain() -> None:
            nonlocal drained
            await pool.drain()
            drained = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(leased_job)
            await settle()
            tg.start_soon(drain)
            await settle()
            assert not pool.create(SMALL)  # no creates while draining
            await run_until(clock, lambda: drained)
        assert cloud.instance_ids(SET) == []
        assert pool.workers() == []
        assert len(lost) == 1
        failed = [c for c in cloud.calls if c.operation == "destroy" and c.outcome != "ok"]
        assert failed, "no destroy failed: the test proves no retry"


async def test_events_report_every_change_in_order_to_every_subscriber() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, quotas={"standard": {"instances": 1}})
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        first, second = pool.events(), pool.events()
        assert pool.create(SMALL) and pool.create(SMALL)
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1} and pool.at_quota())
        async with pool.lease(SMALL):
            pass
        assert pool.shutdown(SMALL)
        await run_until(clock, lambda: not pool.workers())
    seen: list[list[PoolEvent]] = [[e async for e in first], [e async for e in second]]
    assert seen[0] == seen[1]
    states_seen = [
        (e.kind, e.state)
        for e in seen[0]
        if e.kind is not PoolEventKind.HOLD and e.kind is not PoolEventKind.HOLD_ENDED
    ]
    assert states_seen == [
        (PoolEventKind.STATE, WorkerState.BOOTING),
        (PoolEventKind.STATE, WorkerState.IDLE),
        (PoolEventKind.STATE, WorkerState.RUNNING),
        (PoolEventKind.STATE, WorkerState.IDLE),
        (PoolEventKind.STATE, WorkerState.SHUTDOWN),
        (PoolEventKind.GONE, WorkerState.SHUTDOWN),
    ]
    holds = [e for e in seen[0] if e.kind is PoolEventKind.HOLD]
    assert [h.hold for h in holds] == ["quota"]
    assert [e.time for e in seen[0]] == sorted(e.time for e in seen[0])


async def test_a_slow_subscriber_never_blocks_the_pool_and_learns_what_it_missed() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        slow = pool.events(max_buffered=2)
        fast = pool.events()
        for _ in range(3):
            assert pool.create(SMALL)
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 3})
        assert pool.shutdown(SMALL)  # the pool went on while nobody read `slow`
        await settle()
    everything = [e async for e in fast]
    got = [e async for e in slow]
    assert got[:2] == everything[:2]
    assert got[2].kind is PoolEventKind.DROPPED
    assert got[2].dropped == len(everything) - 2
    with pytest.raises(ValueError, match="max_buffered"):
        pool.events(max_buffered=0)


async def test_metrics_count_workers_creates_destroys_probes_boot_and_lease_wait() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, failure_rates={"create": 0.0})
    hosts = FakeHosts(cloud, clock)
    registry = prometheus_client.CollectorRegistry()
    async with make_pool(await cloud.instance_set(SET), clock, hosts, registry=registry) as pool:
        assert pool.create(SMALL)
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1})
        await run_to(clock, clock.now() + 5.0)
        async with pool.lease(SMALL):
            pass
        assert pool.shutdown(SMALL)
        await run_until(clock, lambda: not pool.workers())

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("cloudvm_pool_workers", instance_type="small", state="idle") == 0
    assert value("cloudvm_pool_workers", instance_type="small", state="shutdown") == 0
    assert value("cloudvm_pool_creates_total", instance_type="small", outcome="ok") == 1
    assert value("cloudvm_pool_destroys_total", outcome="ok") == 1
    assert value("cloudvm_pool_probes_total", outcome="ok") >= 1
    assert value("cloudvm_pool_boot_seconds_count", instance_type="small") == 1
    assert value("cloudvm_pool_lease_wait_seconds_count", instance_type="small") == 1
    assert value("cloudvm_resilient_decisions_total", kind="create", decision="at_quota") == 0
