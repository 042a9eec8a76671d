"""Case: one WorkerPool holding 2000 workers on the fake cloud.

Probes go through a fast fake executor (``executor_factory``) that answers at
once, so what is measured is the pool's own work: scheduling, rate limiting,
bookkeeping, one task per probe. The pool runs on real time with a short
``probe_interval``; over a few intervals we count the probes done (it keeps up
when every worker was probed once per interval) and the process CPU they
cost. Memory per worker is what tracemalloc attributes to the pool's own code
once every worker is IDLE, in a separate run (tracemalloc slows everything).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Mapping

import anyio
import asyncssh
from _stats import CaseResult, Row

import cloudvm
from cloudvm import ExecutorTarget, InstanceSetID, InstanceType
from cloudvm.testing import FakeCloud

__all__ = ["run"]

NAME = "pool"
ITYPE = InstanceType(
    name="small",
    provider_type="t3.small",
    vcpus=2,
    ram=2 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.02,
)
PROBE_INTERVAL = 1.0  # seconds; short so that a run covers many intervals
READY_TIMEOUT = 300.0  # seconds for the whole fleet to be created and probed


class _FastExecutor:
    """Answers every command at once, counting the probes."""

    probes = 0

    def __init__(self, target: ExecutorTarget) -> None:
        self._target: ExecutorTarget | None = target

    def set_signers(self, *keys: asyncssh.SSHKey) -> None:
        pass

    def set_target(self, target: ExecutorTarget) -> None:
        self._target = target

    @property
    def target(self) -> ExecutorTarget | None:
        return self._target

    async def execute(
        self, cmd: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[bytes, bytes]:
        _FastExecutor.probes += 1
        return b"", b""

    async def close(self) -> None:
        pass


def _config(workers: int) -> dict[str, object]:
    return {
        "instance_types": [ITYPE],
        "image_id": "ami-bench",
        "max_instances": workers,
        "max_concurrent_creates": 100,
        "probe_interval": PROBE_INTERVAL,
        "max_probes_per_second": 100_000.0,
        "sync_interval": 30.0,
        "timeout_idle": 1e6,
        "timeout_booting": 1e6,
    }


async def _fleet(workers: int, measure_seconds: float) -> dict[str, float]:
    """Create the fleet, wait until it is IDLE, then measure for a while."""
    cloud = FakeCloud({"rate_limits": None})
    instance_set = await cloud.instance_set(InstanceSetID("bench-pool"))
    pool = cloudvm.WorkerPool(
        instance_set, _config(workers), signers=[], executor_factory=_FastExecutor
    )
    async with pool:
        with anyio.fail_after(READY_TIMEOUT):
            while pool.counts()["small"][cloudvm.WorkerState.IDLE] < workers:
                for _ in range(workers - pool.unallocated()["small"]):
                    pool.create(ITYPE)
                await anyio.sleep(0.05)
        await anyio.sleep(PROBE_INTERVAL)  # let the creation burst settle into rounds
        probes, cpu, wall = _FastExecutor.probes, time.process_time(), time.perf_counter()
        await anyio.sleep(measure_seconds)
        probes = _FastExecutor.probes - probes
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await pool.drain()
    await cloud.close()
    intervals = wall / PROBE_INTERVAL
    return {
        "cpu_us_per_worker_interval": 1e6 * cpu / (workers * intervals),
        "kept_up": probes / (workers * intervals),
        "cpu_share": cpu / wall,
    }


async def _memory(workers: int) -> float:
    """Bytes allocated by the pool's own code per IDLE worker."""
    cloud = FakeCloud({"rate_limits": None})
    instance_set = await cloud.instance_set(InstanceSetID("bench-pool-memory"))
    tracemalloc.start()
    try:
        pool = cloudvm.WorkerPool(
            instance_set, _config(workers), signers=[], executor_factory=_FastExecutor
        )
        async with pool:
            with anyio.fail_after(READY_TIMEOUT):
                while pool.counts()["small"][cloudvm.WorkerState.IDLE] < workers:
                    for _ in range(workers - pool.unallocated()["small"]):
                        pool.create(ITYPE)
                    await anyio.sleep(0.05)
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*cloudvm/pool/*")]
            )
            size = sum(stat.size for stat in snapshot.statistics("filename"))
            await pool.drain()
    finally:
        tracemalloc.stop()
        await cloud.close()
    return size / workers


async def run(*, quick: bool = False) -> CaseResult:
    workers = 50 if quick else 2000
    seconds = 1.0 if quick else 10.0
    repeats = 1 if quick else 3
    result = CaseResult(NAME, f"Pool: {workers} workers probed every {PROBE_INTERVAL:g} s")
    cpu, kept, share = [], [], []
    for _ in range(repeats):
        got = await _fleet(workers, seconds)
        cpu.append(got["cpu_us_per_worker_interval"])
        kept.append(got["kept_up"])
        share.append(got["cpu_share"])
    memory_workers = 50 if quick else 1000
    memory = [await _memory(memory_workers)]
    result.rows = [
        Row(NAME, "cpu per worker per probe interval", "us", cpu, n=workers),
        Row(
            NAME,
            "probes done per worker per interval",
            "probes",
            kept,
            n=workers,
            higher_is_better=True,
            note="1.0 = every worker probed every interval",
        ),
        Row(NAME, "share of one core", "fraction", share, n=workers),
        Row(NAME, "pool memory per worker", "bytes", memory, n=memory_workers),
    ]
    result.notes.append(
        f"probe_interval={PROBE_INTERVAL:g} s, a fast fake executor; at the default "
        f"probe_interval=10 s the core share is a tenth of the one shown"
    )
    return result
