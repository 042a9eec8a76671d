"""A worker's life: create, boot probe, lease, idle, shutdown; on simulated time."""

from __future__ import annotations

from cloudvm.pool import WorkerState

from ._support import SET, SMALL, FakeHosts, SimClock, make_pool, run_until, sim_cloud, states


async def test_a_created_worker_boots_is_leased_and_returns_to_idle() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        assert pool.create(SMALL)
        assert pool.unallocated()["small"] == 1
        await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: 1})
        (worker,) = pool.workers()
        assert hosts.probes[worker.id] == 1
        async with pool.lease(SMALL) as leased:
            assert states(pool) == {WorkerState.RUNNING: 1}
            out, _ = await leased.execute("job a 0")
            assert out == b"a done\n"
        assert states(pool) == {WorkerState.IDLE: 1}
        assert hosts.completed == [("a", worker.id)]
        assert cloud.instance_ids(SET) == [worker.id]
    # Leaving the pool leaves the instance for the next one.
    assert cloud.instance_ids(SET) == [worker.id]
