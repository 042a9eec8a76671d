"""Leases: first come first served, bounded waits, nothing reserved by a
cancelled waiter, lost workers reported and destroyed."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from cloudvm.pool import IdleBehavior, WorkerLost, WorkerPool, WorkerState
from cloudvm.testing import CancelBy, cancel_at_each_suspension

from ._support import (
    SET,
    SMALL,
    FakeHosts,
    SimClock,
    make_config,
    make_pool,
    run_to,
    run_until,
    settle,
    sim_cloud,
    states,
)


async def _idle(pool: WorkerPool, clock: SimClock, n: int = 1) -> None:
    for _ in range(n - pool.unallocated()["small"]):
        assert pool.create(SMALL)
    await run_until(clock, lambda: states(pool) == {WorkerState.IDLE: n})


async def test_leases_are_served_first_come_first_served() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    order: list[int] = []
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:

        async def job(n: int) -> None:
            async with pool.lease(SMALL) as worker:
                order.append(n)
                await worker.execute(f"job j{n} 1")

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(job, n)
                await settle()  # each lease queues before the next starts
            assert pool.waiting()["small"] == 5
            assert pool.create(SMALL)
            await run_until(clock, lambda: len(hosts.completed) == 5)
    assert order == [0, 1, 2, 3, 4]


async def test_a_lease_times_out_on_the_pool_clock_and_leaves_nothing_waiting() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        started = clock.now()
        outcome: list[BaseException] = []

        async def wait() -> None:
            try:
                async with pool.lease(SMALL, timeout=30.0):
                    pass
            except TimeoutError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await run_until(clock, lambda: bool(outcome))
        assert clock.now() == started + 30.0
        assert pool.waiting()["small"] == 0
        await _idle(pool, clock)  # the worker that comes later is free
        async with pool.lease(SMALL, timeout=0):
            pass


@pytest.mark.parametrize("how", ["task-cancel", "wait-for", "anyio-scope"])
async def test_a_waiter_cancelled_just_after_being_given_a_worker_gives_it_back(
    how: str,
) -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        await _idle(pool, clock)
        scope = anyio.CancelScope()
        got: list[bool] = []

        async def waiter() -> None:
            with scope:
                async with pool.lease(SMALL):
                    got.append(True)
                    await anyio.sleep_forever()

        holder = pool.lease(SMALL)
        await holder.__aenter__()
        if how == "task-cancel":
            task = asyncio.create_task(waiter())
        elif how == "wait-for":
            task = asyncio.create_task(asyncio.wait_for(waiter(), timeout=3600))
        else:
            task = asyncio.create_task(waiter())
        await settle()
        assert pool.waiting()["small"] == 1
        await holder.__aexit__(None, None, None)  # hands the worker to the waiter...
        if how == "anyio-scope":
            scope.cancel()  # ...which is cancelled before it runs again
            await task
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # wait_for runs the waiter in a task of its own and anyio delivers a
        # scope's cancellation at a later checkpoint: either may let the waiter
        # take the worker before the cancellation reaches it (then its lease
        # gives the worker back). Task.cancel() reaches it first.
        assert got == [] or how != "task-cancel"
        assert pool.waiting()["small"] == 0
        assert states(pool) == {WorkerState.IDLE: 1}
        async with pool.lease(SMALL, timeout=0):  # and it is free at once
            pass


@pytest.mark.parametrize("by", [CancelBy.TASK, CancelBy.ANYIO])
async def test_a_lease_cancelled_at_any_point_leaves_nothing_reserved(by: CancelBy) -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:

        async def operation() -> None:
            if pool.unallocated()["small"] == 0:
                assert pool.create(SMALL)
            async with pool.lease(SMALL) as worker:
                await worker.execute("job x 0")

        async def after_each(point: int, completed: bool) -> None:
            await settle()
            assert pool.waiting()["small"] == 0
            assert WorkerState.RUNNING not in states(pool)
            # Every worker is free for the next caller, at once.
            for _ in pool.workers():
                async with pool.lease(SMALL, timeout=0):
                    pass
            # The next run waits again: no worker is left over.
            while pool.shutdown(SMALL):
                pass
            await run_until(clock, lambda: not pool.workers() and not pool.unallocated()["small"])

        cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after_each)
        assert cancelled >= 3


async def test_a_worker_whose_host_dies_during_a_lease_raises_worker_lost_and_goes() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        await _idle(pool, clock)
        outside = await cloud.instance_set(SET)
        lost: list[WorkerLost] = []

        async def job() -> None:
            async with pool.lease(SMALL) as worker:
                with pytest.raises(WorkerLost) as caught:
                    await worker.execute("job long 1000")
                lost.append(caught.value)
                with pytest.raises(WorkerLost):
                    await worker.execute("job again 1")

        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await run_to(clock, clock.now() + 50.0)
            (instance,) = await outside.instances()
            await instance.destroy()  # the host dies under the lease
            await run_until(clock, lambda: bool(lost))
        assert clock.now() < 1000.0  # the pool noticed; the command did not run out
        await run_until(clock, lambda: not pool.workers())
        assert hosts.completed == []


@pytest.mark.parametrize("recovers", [False, True])
async def test_a_broken_lease_is_probed_before_the_next_lease(recovers: bool) -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        await _idle(pool, clock)
        (worker,) = pool.workers()
        async with pool.lease(SMALL) as leased:
            hosts.refuse.add(worker.id)
            with pytest.raises(WorkerLost):
                await leased.execute("job x 1")
            if recovers:
                hosts.refuse.discard(worker.id)
        # Not leasable until the probe has spoken.
        with pytest.raises(TimeoutError):
            async with pool.lease(SMALL, timeout=0):
                pass
        probes = hosts.probes[worker.id]
        if recovers:
            await run_until(clock, lambda: hosts.probes[worker.id] > probes)
            async with pool.lease(SMALL, timeout=0):
                pass
        else:
            await run_until(clock, lambda: not pool.workers())
            assert cloud.instance_ids(SET) == []


async def test_a_host_key_failure_during_a_lease_destroys_the_worker_at_once() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        await _idle(pool, clock)
        (worker,) = pool.workers()
        async with pool.lease(SMALL) as leased:
            hosts.liars.add(worker.id)
            with pytest.raises(WorkerLost):
                await leased.execute("job x 1")
            assert states(pool) == {WorkerState.SHUTDOWN: 1}


async def test_an_execute_error_is_the_callers_and_the_worker_stays() -> None:
    from cloudvm import ExecuteError

    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)

    async def failing(executor: object, cmd: str) -> tuple[bytes, bytes]:
        raise ExecuteError("exit 3", exit_status=3, exit_signal=None, stdout=b"", stderr=b"")

    async with make_pool(await cloud.instance_set(SET), clock, hosts) as pool:
        await _idle(pool, clock)
        async with pool.lease(SMALL) as leased:
            original = hosts.answer
            hosts.answer = failing  # type: ignore[method-assign]
            with pytest.raises(ExecuteError):
                await leased.execute("false")
            hosts.answer = original  # type: ignore[method-assign]
        async with pool.lease(SMALL, timeout=0):
            pass


async def test_idle_behaviour_is_kept_in_a_tag_and_obeyed() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    hosts = FakeHosts(cloud, clock)
    config = make_config(timeout_idle=60.0)
    async with make_pool(await cloud.instance_set(SET), clock, hosts, config) as pool:
        await _idle(pool, clock)
        (worker,) = pool.workers()
        await pool.set_idle_behavior(worker.id, IdleBehavior.HOLD)
        (listed,) = await (await cloud.instance_set(SET)).instances()
        assert listed.tags["pool-idle-behavior"] == "hold"
        with pytest.raises(TimeoutError):
            async with pool.lease(SMALL, timeout=0):
                pass
        assert pool.unallocated()["small"] == 0
        await run_to(clock, clock.now() + 600.0)  # held: never idle-timed
        assert states(pool) == {WorkerState.IDLE: 1}
        await pool.set_idle_behavior(worker.id, IdleBehavior.RUN)
        async with pool.lease(SMALL, timeout=0):
            await pool.set_idle_behavior(worker.id, IdleBehavior.DRAIN)
            assert states(pool) == {WorkerState.RUNNING: 1}  # drained when idle
        assert states(pool) == {WorkerState.SHUTDOWN: 1}
        with pytest.raises(KeyError):
            await pool.set_idle_behavior(worker.id + "x", IdleBehavior.RUN)  # type: ignore[arg-type]
