"""A fake cloud, fake hosts and a simulated clock for the pool's tests.

The pool, its resilient wrapper and the fake cloud share one ManualClock
(through ``SimClock``, which also knows when each sleeper is due), so
:func:`run_until` jumps from one due time to the next whenever every task is
blocked: minutes of pool time take milliseconds, and nothing really sleeps.
Hosts are :class:`FakeHosts`: an executor per worker that answers probes and
"runs" jobs on the same clock, and can be told to fail, hang or lie.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import asyncssh

from cloudvm import (
    ExecutorTarget,
    HostKeyError,
    ImageID,
    InstanceSet,
    InstanceSetID,
)
from cloudvm.pool import PoolConfig, WorkerPool, WorkerState
from cloudvm.testing import FakeCloud

from ..resilience._sim import SimClock, _itype, run_until, settle  # same type shapes

_T = TypeVar("_T")

__all__ = [
    "BROKEN",
    "IMAGE",
    "LARGE",
    "PROBE",
    "SET",
    "SMALL",
    "FakeExecutor",
    "FakeHosts",
    "SimClock",
    "drive",
    "make_config",
    "make_pool",
    "run_to",
    "run_until",
    "seconds_since",
    "settle",
    "sim_cloud",
    "states",
]


SMALL = _itype("small", "t3.small", 2)
LARGE = _itype("large", "m5.xlarge", 4)
BROKEN = _itype("broken", "x1.broken", 2)  # hosts of this provider type never answer
IMAGE = ImageID("ami-pool")
SET = InstanceSetID("pool-a")
PROBE = "probe-ok"


def sim_cloud(clock: SimClock, **config: Any) -> FakeCloud:
    config.setdefault("rate_limits", None)
    return FakeCloud(config, clock=clock)


def make_config(**overrides: Any) -> PoolConfig:
    fields: dict[str, Any] = {
        "instance_types": [SMALL, LARGE, BROKEN],
        "image_id": IMAGE,
        "boot_probe_command": PROBE,
        "probe_interval": 10.0,
        "max_probes_per_second": 100.0,
        "timeout_probe_command": 5.0,
        "sync_interval": 30.0,
        "timeout_booting": 300.0,
        "timeout_probe": 120.0,
        "timeout_idle": 60.0,
        "timeout_shutdown": 10.0,
        "max_instances": 20,
    }
    fields.update(overrides)
    return PoolConfig(**fields)


class FakeExecutor:
    """One worker's executor: answers as its :class:`FakeHosts` says."""

    def __init__(self, hosts: FakeHosts, target: ExecutorTarget) -> None:
        self._hosts = hosts
        self._target = target
        self.closed = False

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
        return await self._hosts.answer(self, cmd)

    async def close(self) -> None:
        self.closed = True


@dataclasses.dataclass
class FakeHosts:
    """The hosts behind every fake instance, as the pool's executors see them.

    A host answers only while its instance exists in ``cloud``; hosts of a
    provider type in ``hang_types`` never answer; ids in ``refuse`` refuse
    connections, ids in ``liars`` fail host-key verification. A command
    ``job <name> <seconds>`` runs that long on the clock and is recorded in
    ``completed`` only if the instance still exists at its end.
    """

    cloud: FakeCloud
    clock: SimClock
    hang_types: set[str] = dataclasses.field(default_factory=set)
    refuse: set[str] = dataclasses.field(default_factory=set)
    liars: set[str] = dataclasses.field(default_factory=set)
    probes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    completed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    executors: list[FakeExecutor] = dataclasses.field(default_factory=list)

    def factory(self, target: ExecutorTarget) -> FakeExecutor:
        executor = FakeExecutor(self, target)
        self.executors.append(executor)
        return executor

    def _alive(self, instance_id: str) -> bool:
        return instance_id in self.cloud.instance_ids()

    async def answer(self, executor: FakeExecutor, cmd: str) -> tuple[bytes, bytes]:
        if executor.closed:
            raise RuntimeError("executor closed")
        target = executor.target
        assert target is not None
        instance_id = str(getattr(target, "id"))  # noqa: B009 - WorkerTarget has it
        if getattr(target, "provider_type", None) in self.hang_types:
            await anyio.sleep_forever()
        await self.clock.sleep(0)
        if not self._alive(instance_id) or instance_id in self.refuse:
            raise ConnectionRefusedError(f"{instance_id}: connection refused")
        if instance_id in self.liars:
            raise HostKeyError(f"{instance_id}: the host presented the wrong instance secret")
        if cmd == PROBE:
            self.probes[instance_id] += 1
            return b"", b""
        _, name, seconds = cmd.split()
        await self.clock.sleep(float(seconds))
        if not self._alive(instance_id):
            raise ConnectionResetError(f"{instance_id}: connection lost")
        self.completed.append((name, instance_id))
        return f"{name} done\n".encode(), b""


@contextlib.asynccontextmanager
async def make_pool(
    instance_set: InstanceSet,
    clock: SimClock,
    hosts: FakeHosts,
    config: PoolConfig | None = None,
    **kwargs: Any,
) -> AsyncIterator[WorkerPool]:
    """A running pool on ``clock`` whose executors are ``hosts``."""
    pool = WorkerPool(
        instance_set,
        config if config is not None else make_config(),
        signers=[],
        executor_factory=hosts.factory,
        clock=clock,
        **kwargs,
    )
    async with pool:
        yield pool


def states(pool: WorkerPool, name: str = "small") -> dict[WorkerState, int]:
    """The non-zero counts of one type."""
    return {state: n for state, n in pool.counts()[name].items() if n}


async def run_to(clock: SimClock, when: float) -> None:
    """Let everything due up to ``when`` happen in order, then stop at ``when``."""
    await settle()
    while (due := clock.next_due()) is not None and due <= when:
        clock.advance_to(due)
        await settle()
    if clock.now() < when:
        clock.advance_to(when)
        await settle()


def seconds_since(clock: SimClock, wall: Any) -> float:
    """How long ago (on ``clock``) the UTC time ``wall`` was."""
    return float((clock.wall() - wall).total_seconds())


async def drive(clock: SimClock, operation: Callable[[], Awaitable[_T]]) -> _T:
    """Await ``operation()`` while moving the clock on whenever all else waits."""
    result: list[_T] = []

    async def run() -> None:
        result.append(await operation())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await run_until(clock, lambda: bool(result))
    return result[0]
