"""Hold-offs against the fake cloud's token buckets, on simulated time.

Every test here runs minutes of cloud time in milliseconds: the fake cloud and
the wrapper share one ManualClock, advanced to the next sleeper whenever every
task is blocked (see ``_sim.py``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from cloudvm import Instance, InstanceSet
from cloudvm._resilient import MIN_HOLD_OFF
from cloudvm.testing import CallRecord, FakeCloud

from ._sim import SET, DecisionLog, SimClock, calls_of, create, run_until, sim_cloud, wrap

# A token every 4 s: the fake's earliest_retry (up to 4 s away) is longer than
# the wrapper's MIN_HOLD_OFF, so the cloud's own answer sets the hold-off.
SLOW_BUCKET = {"burst": 2, "refill": 0.25}
EC2_RUN_INSTANCES = {"burst": 5, "refill": 2.0}  # REFERENCE.md section 2
JITTER = 0.5  # the policy's default
OPERATIONS = {"create": {"create"}, "list": {"instances"}, "other": {"set_tags", "destroy"}}


async def _call_kind(kind: str, wrapped: InstanceSet, instances: list[Instance], n: int) -> None:
    if kind == "create":
        await create(wrapped)
    elif kind == "list":
        await wrapped.instances()
    elif n % 2:
        await instances[n].set_tags({"n": str(n)})
    else:
        await instances[n].destroy()


def _assert_no_call_during_hold_offs(
    clock: SimClock, calls: list[CallRecord], log: DecisionLog, kind: str
) -> None:
    hold_offs = log.hold_offs(kind)
    assert hold_offs, "nothing was held off: the test proves nothing"
    arrivals = sorted(clock.wall_at(c.arrived) for c in calls if c.arrived is not None)
    for began, until in hold_offs:
        start = clock.wall_at(began)
        assert until >= start + timedelta(seconds=MIN_HOLD_OFF)
        inside = [t for t in arrivals if start < t < until]
        assert inside == [], f"{kind} calls reached the cloud during the hold-off {start}..{until}"
        # The waiters go as soon as the hold-off ends, within the jitter.
        first_after = min(t for t in arrivals if t >= until)
        assert first_after <= until + timedelta(seconds=JITTER)


@pytest.mark.parametrize("kind", ["create", "list", "other"])
async def test_no_call_of_a_held_off_kind_reaches_the_cloud(kind: str) -> None:
    clock = SimClock()
    cloud = sim_cloud(clock)
    log = DecisionLog(clock)
    wrapped = wrap(await cloud.instance_set(SET), clock, log, retry_rate_limited=True)
    instances = [await create(wrapped) for _ in range(10)] if kind == "other" else []
    cloud.configure(rate_limits={"create": None, "list": None, "other": None, kind: SLOW_BUCKET})
    cloud.clear_calls()
    done = 0

    async def caller(n: int) -> None:
        nonlocal done
        await _call_kind(kind, wrapped, instances, n)
        done += 1

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(caller, n)
        await run_until(clock, lambda: done == 10)

    calls = [c for c in cloud.calls if c.operation in OPERATIONS[kind]]
    assert [c.outcome for c in calls].count("ok") == 10
    _assert_no_call_during_hold_offs(clock, calls, log, kind)
    # Only the throttled kind was ever held off; the others still go at once.
    assert len(log.hold_offs()) == len(log.hold_offs(kind))
    before = len(cloud.calls)
    if kind == "list":
        await create(wrapped)
    else:
        await wrapped.instances()
    assert len(cloud.calls) == before + 1


async def _create_many(
    clock: SimClock, cloud: FakeCloud, log: DecisionLog, count: int, **policy: Any
) -> None:
    wrapped = wrap(
        await cloud.instance_set(SET),
        clock,
        log,
        retry_rate_limited=True,
        max_wait=600,
        **policy,
    )
    done = 0

    async def creator() -> None:
        nonlocal done
        await create(wrapped)
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(creator)
        await run_until(clock, lambda: done == count)


def _ec2_shaped(clock: SimClock) -> FakeCloud:
    return sim_cloud(clock, rate_limits={"create": EC2_RUN_INSTANCES, "list": None, "other": None})


# The bucket's own floor for 100 creates: the burst at once, then one token per
# 1/refill seconds.
COUNT = 100
MINIMUM = (COUNT - EC2_RUN_INSTANCES["burst"]) / EC2_RUN_INSTANCES["refill"]


async def test_a_hundred_concurrent_creates_finish_near_the_bucket_limit() -> None:
    clock = SimClock()
    cloud = _ec2_shaped(clock)
    log = DecisionLog(clock)
    await _create_many(clock, cloud, log, COUNT)

    creates = calls_of(cloud, "create")
    ok = [c for c in creates if c.outcome == "ok"]
    throttled = [c for c in creates if c.outcome == "RateLimitError"]
    assert len(ok) == COUNT
    assert len(cloud.instance_ids()) == COUNT  # no throttled call created anything
    elapsed = max(c.finished for c in ok)
    assert MINIMUM <= elapsed <= 1.1 * MINIMUM, (elapsed, MINIMUM)
    _assert_no_call_during_hold_offs(clock, creates, log, "create")
    # The admission window keeps all but a few callers from the cloud until
    # the bucket's size is known, and after each hold-off a probe goes alone:
    # each throttled call started a hold-off of its own.
    started = log.decisions("hold_off_started")
    assert 0 < len(throttled) <= len(started)
    # One log line per hold-off, none per waiting caller.
    assert len(log.records) == len(log.hold_offs())


async def test_without_the_window_every_caller_is_in_flight_before_the_first_throttle() -> None:
    clock = SimClock()
    cloud = _ec2_shaped(clock)
    log = DecisionLog(clock)
    await _create_many(clock, cloud, log, COUNT, adaptive_concurrency=False)

    creates = calls_of(cloud, "create")
    ok = [c for c in creates if c.outcome == "ok"]
    throttled = [c for c in creates if c.outcome == "RateLimitError"]
    assert len(ok) == COUNT
    elapsed = max(c.finished for c in ok)
    assert MINIMUM <= elapsed <= 1.1 * MINIMUM, (elapsed, MINIMUM)
    _assert_no_call_during_hold_offs(clock, creates, log, "create")
    # Before the first RateLimitError the wrapper knows of no limit: every caller
    # is in flight at t=0 and each one past the burst is throttled once. From
    # then on, each throttled call is one the wrapper sent when a hold-off
    # ended, and it starts the next hold-off.
    first_hold = log.hold_offs()[0][0]
    initial = [c for c in throttled if c.finished <= first_hold]
    later = [c for c in throttled if c.finished > first_hold]
    assert len(initial) == COUNT - EC2_RUN_INSTANCES["burst"]
    assert len(later) <= len(log.hold_offs()) - 1


async def test_without_throttling_the_window_doubles_every_round_trip() -> None:
    clock = SimClock()
    # One second per create and no rate limit: only the window holds callers back.
    cloud = sim_cloud(clock, latency={"create": 1.0})
    log = DecisionLog(clock)
    await _create_many(clock, cloud, log, COUNT)
    creates = calls_of(cloud, "create")
    assert [c.outcome for c in creates] == ["ok"] * COUNT
    # Rounds of 2, 4, 8, 16, 32 and the last 38 calls: six round trips where
    # sending everyone at once takes one.
    assert max(c.finished for c in creates) == pytest.approx(6.0)
    assert log.records == []


async def test_serialised_creates_meet_no_more_throttles_than_hold_offs() -> None:
    clock = SimClock()
    cloud = _ec2_shaped(clock)
    log = DecisionLog(clock)
    # One create in flight at a time, as Arvados' dispatcher runs EC2 by default.
    await _create_many(clock, cloud, log, COUNT, max_concurrent_creates=1)

    creates = calls_of(cloud, "create")
    ok = [c for c in creates if c.outcome == "ok"]
    throttled = [c for c in creates if c.outcome == "RateLimitError"]
    assert len(ok) == COUNT
    elapsed = max(c.finished for c in ok)
    assert MINIMUM <= elapsed <= 1.1 * MINIMUM, (elapsed, MINIMUM)
    assert 0 < len(throttled) <= len(log.hold_offs())
    _assert_no_call_during_hold_offs(clock, creates, log, "create")
