"""Cancelled callers of the wrapper leave the wrapper and the fake consistent."""

from __future__ import annotations

import anyio
import pytest

from cloudvm import RateLimitError

from ._sim import SET, SimClock, calls_of, create, run_until, settle, sim_cloud, wrap


async def test_cancelled_waiters_in_a_hold_off_leave_nothing_behind() -> None:
    clock = SimClock()
    # One token, then one every 10 s: a 10 s hold-off after the second create.
    cloud = sim_cloud(clock, rate_limits={"create": {"burst": 1, "refill": 0.1}})
    wrapped = wrap(await cloud.instance_set(SET), clock)
    await create(wrapped)
    with pytest.raises(RateLimitError):
        await create(wrapped)
    async with anyio.create_task_group() as waiters:
        for _ in range(20):
            waiters.start_soon(create, wrapped)
        await settle()
        assert clock.sleepers == 20
        waiters.cancel_scope.cancel()
    assert clock.sleepers == 0  # no waiter left behind on the clock
    assert len(calls_of(cloud, "create")) == 2  # none of them reached the cloud

    # The hold-off still holds, then ends as if they had never waited.
    done: list[bool] = []

    async def later() -> None:
        await create(wrapped)
        done.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        await run_until(clock, lambda: bool(done))
    assert clock.now() >= 10
    assert [c.outcome for c in calls_of(cloud, "create")] == ["ok", "RateLimitError", "ok"]
    assert len(cloud.instance_ids()) == 2
    assert cloud.misuses == []


async def test_cancelled_creates_free_their_slots_and_rate_cap_tokens() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    wrapped = wrap(
        await cloud.instance_set(SET),
        clock,
        initial_window=2,  # the default, said here because the test counts on it
        max_concurrent_creates=2,
        max_calls_per_second=1,
        max_calls_burst=2,
    )
    cloud.hold("create")
    async with anyio.create_task_group() as doomed:
        for _ in range(5):
            doomed.start_soon(create, wrapped)
        await cloud.wait_held(2)  # two in flight at the cloud, three queued for a slot
        await settle()
        assert cloud.held == 2
        doomed.cancel_scope.cancel()
    assert cloud.held == 0
    assert [c.outcome for c in cloud.calls] == ["cancelled", "cancelled"]
    assert cloud.instance_ids() == []  # held at the cloud's door: nothing was created
    cloud.release()

    # The two calls that reached the cloud spent their rate-cap tokens; the
    # three cancelled in the queue took none. Once the bucket has refilled, the
    # slots are free again: two creates go at once, a third 1 s later.
    clock.advance(2.0)
    done = 0

    async def creator() -> None:
        nonlocal done
        await create(wrapped)
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(creator)
        await settle()
        assert done == 2
        await run_until(clock, lambda: done == 3)
    assert len(cloud.instance_ids()) == 3
    assert clock.now() == pytest.approx(3.0)


async def test_a_create_cancelled_after_the_cloud_acted_is_found_by_its_tags() -> None:
    clock = SimClock()
    cloud = sim_cloud(clock, latency={"create": 5.0})
    wrapped = wrap(await cloud.instance_set(SET), clock)
    async with anyio.create_task_group() as doomed:
        doomed.start_soon(create, wrapped)
        await settle()  # the instance exists; the answer is on its way
        doomed.cancel_scope.cancel()
    (call,) = cloud.calls
    assert call.outcome == "cancelled"
    assert call.instance_id is not None
    found = await wrapped.instances({"role": "sim"})
    assert [i.id for i in found] == [call.instance_id]
    await found[0].destroy()
    assert cloud.instance_ids() == []
    assert cloud.misuses == []
