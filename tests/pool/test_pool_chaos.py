"""1000 jobs through a faulty fake cloud, with a pool restart half way.

Everything runs on one simulated clock (no real sleeps): the fake cloud fails
10% of creates and destroys, loses some responses, throttles, has a quota and
a capacity shortage on one type for a while; one instance type's hosts never
answer. Half way through, the first pool and its dispatcher are cancelled in
the middle of their work (a crash: creates, leases and destroys in flight),
and a new pool over a new InstanceSet object with the same id adopts the fleet.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random

import anyio

from cloudvm import CloudError, InstanceType
from cloudvm.pool import WorkerLost, WorkerPool
from cloudvm.testing import CallRecord, FakeCloud

from ._support import (
    BROKEN,
    LARGE,
    SET,
    SMALL,
    FakeHosts,
    SimClock,
    make_config,
    run_until,
    sim_cloud,
)

JOBS = 1000
TIMEOUT_BOOTING = 120.0
SHORTAGE_ENDS = 300.0  # the capacity shortage on LARGE lasts this long
CONFIG = make_config(
    max_instances=16,
    max_concurrent_creates=4,
    probe_interval=10.0,
    max_probes_per_second=50.0,
    sync_interval=30.0,
    timeout_booting=TIMEOUT_BOOTING,
    timeout_probe=60.0,
    timeout_idle=30.0,
    timeout_shutdown=10.0,
)


class Dispatcher:
    """The dispatcher's side: a queue of jobs, and counts of what it asked."""

    def __init__(self, clock: SimClock) -> None:
        rng = random.Random(12)
        self.clock = clock
        self.jobs = {f"j{n}": (SMALL if n % 3 else LARGE, rng.randint(1, 30)) for n in range(JOBS)}
        self.done: collections.Counter[str] = collections.Counter()
        self.asked: collections.Counter[str] = collections.Counter()
        self.lost = 0

    def ask(self, pool: WorkerPool, itype: InstanceType) -> bool:
        if pool.create(itype):
            self.asked[itype.name] += 1
            return True
        return False

    async def run_job(self, pool: WorkerPool, name: str) -> None:
        itype, seconds = self.jobs[name]
        while True:
            try:
                async with pool.lease(itype) as worker:
                    await worker.execute(f"job {name} {seconds}")
            except WorkerLost:
                self.lost += 1
                continue
            self.done[name] += 1
            return

    async def scale(self, pool: WorkerPool) -> None:
        while True:
            waiting, unallocated = pool.waiting(), pool.unallocated()
            for itype in (SMALL, LARGE):
                want = min(waiting[itype.name] - unallocated[itype.name], 6)
                while want > 0 and self.ask(pool, itype):
                    want -= 1
            await self.clock.sleep(5.0)

    async def phase(self, cloud: FakeCloud, hosts: FakeHosts, stop_at: int) -> None:
        """Run a pool and the jobs not done yet until ``stop_at`` are done;
        then cancel everything at once (pool included) as a crash would."""
        pool = WorkerPool(
            await cloud.instance_set(SET),
            CONFIG,
            signers=[],
            executor_factory=hosts.factory,
            clock=self.clock,
        )
        async with pool, anyio.create_task_group() as tg:
            tg.start_soon(self.scale, pool)
            for _ in range(2):
                self.ask(pool, BROKEN)
            for name in self.jobs:
                if not self.done[name]:
                    tg.start_soon(self.run_job, pool, name)
            broken_again = False
            while sum(self.done.values()) < stop_at:
                if not broken_again and sum(self.done.values()) >= stop_at - 50:
                    # Young broken instances for the next pool to adopt.
                    broken_again = any([self.ask(pool, BROKEN) for _ in range(2)])
                await self.clock.sleep(1.0)
            if stop_at == JOBS:
                # The broken type's instances go by timeout_booting, not by drain.
                while any(pool.counts()[BROKEN.name].values()):
                    await self.clock.sleep(1.0)
                await pool.drain()
            tg.cancel_scope.cancel()


def _made(cloud: FakeCloud) -> list[CallRecord]:
    """Create calls that made an instance (a lost response made one too)."""
    return [
        c
        for c in cloud.calls
        if c.operation == "create" and c.outcome in ("ok", "LostResponseError")
    ]


async def test_a_thousand_jobs_through_faults_and_a_restart_complete_exactly_once() -> None:
    clock = SimClock()
    cloud = sim_cloud(
        clock,
        rate_limits={"create": {"burst": 5, "refill": 2.0}, "list": None, "other": None},
        failure_rates={"create": 0.1, "destroy": 0.1},
        lost_responses={"create": 0.1, "destroy": 0.1},
        quotas={"standard": {"instances": 12}},
        quota_groups={BROKEN.provider_type: "other"},
        capacity_shortage={"instance_types": [LARGE.provider_type]},
        seed=int(os.environ.get("CLOUDVM_CHAOS_SEED", "1")),
    )
    hosts = FakeHosts(cloud, clock, hang_types={BROKEN.provider_type})
    dispatcher = Dispatcher(clock)
    finished = False

    async def preempt() -> None:
        # Now and then the cloud takes a worker away, leased or not.
        outside = await cloud.instance_set(SET)
        rng = random.Random(7)
        while True:
            await clock.sleep(97.0)
            running = [
                i for i in await outside.instances() if i.provider_type == SMALL.provider_type
            ]
            if running:
                with contextlib.suppress(CloudError):  # the cloud's own faults
                    await rng.choice(running).destroy()

    async def lift_shortage() -> None:
        await clock.sleep(SHORTAGE_ENDS)
        cloud.configure(capacity_shortage={})

    async def run() -> None:
        nonlocal finished
        await dispatcher.phase(cloud, hosts, stop_at=JOBS // 2)
        await dispatcher.phase(cloud, hosts, stop_at=JOBS)
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(lift_shortage)
        tg.start_soon(run)
        tg.start_soon(preempt)
        await run_until(clock, lambda: finished, limit=36_000)
        tg.cancel_scope.cancel()

    made = _made(cloud)
    completed = collections.Counter(name for name, _ in hosts.completed)
    outcomes = collections.Counter(c.outcome for c in cloud.calls if c.operation == "create")
    print(
        f"\nchaos: {JOBS} jobs, {len(made)} instances created "
        f"({dict(outcomes)}), {sum(dispatcher.asked.values())} asked, "
        f"{dispatcher.lost} leases lost, "
        f"{len(cloud.instance_ids(SET))} leaked, "
        f"{sum(n - 1 for n in completed.values() if n > 1)} duplicates, "
        f"{clock.now():.0f} simulated seconds"
    )
    # Every job completed exactly once, on a host and in the dispatcher's books.
    assert set(completed) == set(dispatcher.jobs)
    assert max(completed.values()) == 1
    assert set(dispatcher.done) == set(dispatcher.jobs) and max(dispatcher.done.values()) == 1
    # No instance leaked; none was created beyond what was asked, none twice.
    assert cloud.instance_ids(SET) == []
    for itype in (SMALL, LARGE, BROKEN):
        of_type = [c for c in made if c.args["instance_type"] == itype.provider_type]
        assert len(of_type) <= dispatcher.asked[itype.name], itype.name
    tokens = [c.args["tags"]["pool-create-token"] for c in cloud.calls if c.operation == "create"]
    assert len(tokens) == len(set(tokens))
    # The faults did happen.
    assert outcomes["LostResponseError"] and outcomes["InjectedError"]
    assert outcomes["QuotaError"] and outcomes["CapacityError"]
    assert dispatcher.lost  # preempted under a lease: WorkerLost, then run again
    # Every broken instance was destroyed, none before timeout_booting from its creation.
    broken = {
        c.instance_id: c.called for c in made if c.args["instance_type"] == BROKEN.provider_type
    }
    assert len(broken) >= 3
    first_destroy: dict[str | None, float] = {}
    for c in cloud.calls:
        if c.operation == "destroy" and c.instance_id in broken:
            first_destroy.setdefault(c.instance_id, c.called)
    assert set(first_destroy) == set(broken)
    for instance_id, created in broken.items():
        assert first_destroy[instance_id] >= created + TIMEOUT_BOOTING - 1e-6
    assert not hosts.probes.keys() & broken.keys()  # never answered, never used
