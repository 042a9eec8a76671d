"""Critical sections that every kind of cancellation lets finish.

anyio's ``CancelScope(shield=True)`` stops anyio's own cancellation only: a
plain ``Task.cancel()``, ``asyncio.wait_for`` or ``asyncio.timeout`` goes
straight through it. Our callers are asyncio programs, so a section that must
not stop half way (a create that has to finish recording what it made, a
server that must be stopped once started, a two-call tag replacement) runs in
a task of its own, which the caller's cancellation cannot reach; the caller
waits for it to end and only then re-raises the cancellation.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

__all__ = ["run_critical"]

_T = TypeVar("_T")


async def run_critical(
    section: Callable[[], Awaitable[_T]],
    *,
    rollback: Callable[[_T], Awaitable[object]] | None = None,
) -> _T:
    """Run ``section()`` to its end, whatever cancellation reaches the caller.

    The section runs in a task of its own, so neither ``Task.cancel()`` (nor
    ``asyncio.wait_for`` / ``asyncio.timeout``, which use it) nor a cancelled
    anyio scope interrupts it. When the caller is cancelled while it runs:

    - the caller still waits until the section has ended (the section must
      bound its own waits, with ``anyio.fail_after`` say, so that this never
      hangs);
    - if the section succeeded and ``rollback`` is given, ``rollback(result)``
      runs, protected the same way, to undo what the section did;
    - then the cancellation is re-raised: the caller never returns a result
      after being cancelled, and asyncio's cancel count is left as it was, so
      ``asyncio.timeout`` still turns it into TimeoutError.

    Without a cancellation, the section's result is returned and its
    exception raised as they are; ``rollback`` is not called.

    Parameters:
        section: a no-argument coroutine function: the critical section.
        rollback: undoes a completed section for a cancelled caller; None
            keeps the completed section (its effects are consistent on their
            own, e.g. a fully tagged instance).

    Returns:
        What ``section()`` returned.

    Raises:
        BaseException: the section's exception; or the caller's cancellation
            (with the section's or the rollback's error, if any, as its context).
    """
    result, cancelled = await _finish(section)
    if cancelled is None and not _anyio_cancelled():
        return result
    try:
        if rollback is not None:
            _, undo_cancelled = await _finish(lambda: rollback(result))
            cancelled = cancelled or undo_cancelled
    finally:
        if cancelled is not None:
            raise cancelled
        # An anyio scope was cancelled while we were shielded: deliver it now.
        await anyio.lowlevel.checkpoint()
    raise anyio.get_cancelled_exc_class()()  # pragma: no cover - the checkpoint raised


def _anyio_cancelled() -> bool:
    # anyio reports a cancelled (and unshielded) enclosing scope as a deadline
    # of minus infinity; it delivers that cancellation only at a checkpoint.
    return anyio.current_effective_deadline() == -math.inf


async def _finish(
    section: Callable[[], Awaitable[_T]],
) -> tuple[_T, asyncio.CancelledError | None]:
    """Await ``section()`` in its own task until it ends. Returns its result
    and the asyncio cancellation that reached the caller meanwhile, if any; a
    section that failed raises its error, or, for a cancelled caller, the
    cancellation with that error as context."""

    async def wrapped() -> _T:
        return await section()

    task = asyncio.ensure_future(wrapped())
    cancelled: asyncio.CancelledError | None = None
    # The anyio shield keeps anyio from re-delivering its cancellation on every
    # loop iteration while we wait. asyncio.wait never cancels what it waits
    # for, so Task.cancel() only interrupts our wait, which we resume.
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancelled = cancelled or exc
    if task.cancelled():
        # The section was cancelled from outside (e.g. by the loop shutting
        # down): it did not finish, and the caller must not think it did.
        raise cancelled or asyncio.CancelledError()
    error = task.exception()
    if error is not None:
        if cancelled is not None:
            raise cancelled from error
        raise error
    return task.result(), cancelled
