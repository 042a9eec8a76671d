"""Cancel an operation at each of its suspension points, one run per point.

A coroutine can be cancelled wherever it awaits something that suspends its
task. To prove that an operation is safe to cancel anywhere, run it once per
suspension point k = 1, 2, ... and cancel it right after its k-th suspension,
until a run finishes before being cancelled. The cancellation comes either
from asyncio itself (``Task.cancel()``, what ``asyncio.wait_for`` and
``asyncio.timeout`` do) or from an anyio cancel scope around the call: the
two differ, since anyio's shields stop only anyio's.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio

__all__ = ["CancelBy", "cancel_at_each_suspension"]


class CancelBy(enum.Enum):
    """Which kind of cancellation :func:`cancel_at_each_suspension` uses."""

    #: ``Task.cancel()`` on the task running the operation (as ``wait_for`` does).
    TASK = "task"
    #: ``CancelScope.cancel()`` on an anyio scope around the operation.
    ANYIO = "anyio"


async def cancel_at_each_suspension(
    operation: Callable[[], Awaitable[object]],
    *,
    by: CancelBy,
    after_each: Callable[[int, bool], Awaitable[None]],
    max_points: int = 1000,
) -> int:
    """Run ``operation()`` once per suspension point, cancelling run k right
    after the operation's k-th suspension, until a run completes.

    After every run, ``after_each(k, completed)`` is awaited: ``completed`` is
    True for the last run (it finished before its k-th suspension), False for
    a cancelled one. It is where the caller checks its invariants (no
    untagged instance, nothing left behind) and cleans up for the next run.
    An exception other than the cancellation, raised by a cancelled run,
    is re-raised: a cancelled operation must raise its cancellation.

    Parameters:
        operation: makes a fresh coroutine for each run.
        by: cancel with ``Task.cancel()`` or with an anyio scope.
        after_each: awaited after each run with its number and outcome.
        max_points: fail (AssertionError) beyond this many points.

    Returns:
        How many runs were cancelled (the last, completed one not counted).
    """
    for point in range(1, max_points + 1):
        completed = await _run_once(operation, point, by)
        await after_each(point, completed)
        if completed:
            return point - 1
    raise AssertionError(f"the operation still had not completed after {max_points} points")


async def _run_once(operation: Callable[[], Awaitable[object]], point: int, by: CancelBy) -> bool:
    scope = anyio.CancelScope()
    task: asyncio.Task[bool] | None = None
    fired = False

    def on_suspend(n: int) -> None:
        nonlocal fired
        if n != point:
            return
        fired = True
        if by is CancelBy.ANYIO:
            scope.cancel()  # anyio delivers it while the task is suspended
        else:
            assert task is not None
            task.cancel()  # the running task: the wait it is entering is cancelled

    async def run() -> bool:
        """True when the operation was cancelled."""
        if by is CancelBy.ANYIO:
            with scope:
                await _Counted(operation(), on_suspend)
            return scope.cancelled_caught
        await _Counted(operation(), on_suspend)
        return False

    task = asyncio.ensure_future(run())
    try:
        await asyncio.wait((task,))
    except asyncio.CancelledError:
        task.cancel()  # our own caller is being cancelled: take the run with us
        raise
    if task.cancelled():
        if not fired:
            raise AssertionError("the operation was cancelled, but not by us")
        return False
    if (error := task.exception()) is not None:
        raise error
    if task.result():
        return False
    if fired and by is CancelBy.TASK:
        raise AssertionError(
            f"the operation returned normally although it was cancelled at suspension {point}"
        )
    # (an anyio cancellation requested at the last suspension may find the
    # operation already done: anyio delivers it only at the next checkpoint)
    return True


class _Counted:
    """Awaits ``awaitable``, calling ``on_suspend(n)`` at its n-th suspension."""

    def __init__(self, awaitable: Awaitable[object], on_suspend: Callable[[int], None]) -> None:
        self._awaitable = awaitable
        self._on_suspend = on_suspend

    def __await__(self) -> Generator[Any, Any, object]:
        inner = self._awaitable.__await__()
        suspensions = 0
        send_value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is not None:
                    pending, error = error, None
                    yielded = inner.throw(pending)
                else:
                    yielded = inner.send(send_value)
            except StopIteration as stop:
                return stop.value
            suspensions += 1
            self._on_suspend(suspensions)
            try:
                send_value = yield yielded
            except BaseException as exc:  # handed to the operation, as a Task would
                error = exc
