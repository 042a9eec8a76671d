"""driverkit.run_critical: a section finishes (or is rolled back) whatever cancels
its caller, and the cancellation is re-raised; cancel_at_each_suspension."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import anyio
import pytest

from cloudvm.driverkit import run_critical
from cloudvm.testing import CancelBy, cancel_at_each_suspension


class Section:
    """A section that waits for ``release`` before it finishes."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.log: list[object] = []

    async def __call__(self) -> int:
        self.log.append("start")
        self.started.set()
        await self.release.wait()
        await asyncio.sleep(0)  # a second suspension, to be cancelled at too
        self.log.append("end")
        return 7

    async def rollback(self, result: int) -> None:
        await asyncio.sleep(0)
        self.log.append(("rollback", result))


async def test_without_cancellation_the_result_comes_back_and_no_rollback() -> None:
    section = Section()
    section.release.set()
    assert await run_critical(section, rollback=section.rollback) == 7
    assert section.log == ["start", "end"]


async def test_task_cancel_waits_for_the_section_then_rolls_back_and_reraises() -> None:
    section = Section()
    task = asyncio.ensure_future(run_critical(section, rollback=section.rollback))
    await section.started.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second cancel changes nothing
    assert not task.done()  # still waiting for the section
    section.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert section.log == ["start", "end", ("rollback", 7)]


async def test_anyio_scope_cancellation_also_waits_and_rolls_back() -> None:
    section = Section()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(run_critical, section, rollback=section.rollback))
            await section.started.wait()
            scope.cancel()
            # released later, while the cancellation is pending
            asyncio.get_running_loop().call_later(0.01, section.release.set)
    assert scope.cancelled_caught
    assert section.log == ["start", "end", ("rollback", 7)]


async def test_asyncio_timeout_still_becomes_timeout_error() -> None:
    section = Section()

    async def release_later() -> None:
        await section.started.wait()
        await asyncio.sleep(0.05)
        section.release.set()

    releaser = asyncio.ensure_future(release_later())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await run_critical(section)
    await releaser
    assert section.log == ["start", "end"]  # no rollback given: the section is kept


async def test_wait_for_timeout_lets_the_section_finish() -> None:
    section = Section()
    asyncio.get_running_loop().call_later(0.05, section.release.set)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_critical(section), 0.01)
    assert section.log == ["start", "end"]


async def test_a_failing_section_raises_its_error_and_is_not_rolled_back() -> None:
    rolled_back = []

    async def fails() -> int:
        await asyncio.sleep(0)
        raise LookupError("gone")

    async def rollback(result: int) -> None:
        rolled_back.append(result)

    with pytest.raises(LookupError, match="gone"):
        await run_critical(fails, rollback=rollback)
    assert rolled_back == []


async def test_a_cancelled_caller_of_a_failing_section_gets_the_cancellation() -> None:
    started = asyncio.Event()

    async def fails() -> None:
        started.set()
        await asyncio.sleep(0.01)
        raise LookupError("gone")

    task = asyncio.ensure_future(run_critical(fails))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert isinstance(info.value.__cause__, LookupError)


@pytest.mark.parametrize("by", list(CancelBy))
async def test_cancelling_at_each_suspension_of_a_critical_section(by: CancelBy) -> None:
    # Whatever suspension the cancellation lands on, the section ran whole
    # exactly once per run and was rolled back for every cancelled run.
    log: list[str] = []

    async def section() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        log.append("done")

    async def rollback(_: None) -> None:
        log.append("undone")

    async def operation() -> None:
        await run_critical(section, rollback=rollback)

    outcomes: list[bool] = []

    async def after(point: int, completed: bool) -> None:
        outcomes.append(completed)

    cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after)
    assert cancelled >= 1
    assert outcomes == [False] * cancelled + [True]
    assert log == ["done", "undone"] * cancelled + ["done"]


async def test_cancel_at_each_suspension_counts_every_point() -> None:
    seen: list[tuple[int, bool]] = []
    steps: list[int] = []

    async def operation() -> None:
        for i in range(4):
            await asyncio.sleep(0)
            steps.append(i)

    async def after(point: int, completed: bool) -> None:
        seen.append((point, completed))

    assert await cancel_at_each_suspension(operation, by=CancelBy.TASK, after_each=after) == 4
    assert seen == [(1, False), (2, False), (3, False), (4, False), (5, True)]
    # run k was cancelled at its k-th suspension: it got k-1 steps done
    assert steps == [0, 0, 1, 0, 1, 2, 0, 1, 2, 3]


async def test_cancel_at_each_suspension_refuses_an_operation_that_swallows_it() -> None:
    async def swallows() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)

    async def after(point: int, completed: bool) -> None:
        pass

    with pytest.raises(AssertionError, match="returned normally"):
        await cancel_at_each_suspension(swallows, by=CancelBy.TASK, after_each=after)
