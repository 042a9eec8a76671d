"""The workers' executors: one each, made on first use, always closed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import anyio
import asyncssh

from .._executor import SSHExecutor
from .._protocols import Executor, ExecutorTarget
from .._text import printable
from ._context import PoolContext
from ._worker import WorkerRecord

__all__ = ["CLOSE_LIMIT", "Executors"]

#: Seconds (real time) closing one executor may take, or all of them when the pool stops.
CLOSE_LIMIT = 10.0


class Executors:
    """Makes each worker's executor (its probes and leases share it, and so
    its connection) and closes it when the worker goes; whatever is still
    open or closing when the pool stops is closed then."""

    def __init__(
        self,
        ctx: PoolContext,
        *,
        signers: Sequence[asyncssh.SSHKey],
        factory: Callable[[ExecutorTarget], Executor] | None,
    ) -> None:
        self._ctx = ctx
        self._signers = list(signers)
        self._factory = factory
        # Closes under way (or failed): a close cut short by the pool's exit
        # leaves its executor here, and the exit closes it again.
        self._closing: list[Executor] = []

    def of(self, record: WorkerRecord) -> Executor:
        """The worker's executor, made now if it has none."""
        if record.executor is None:
            if self._factory is None:
                record.executor = SSHExecutor(
                    record.target, signers=self._signers, logger=self._ctx.logger.getChild("ssh")
                )
            else:
                record.executor = self._factory(record.target)
                record.executor.set_signers(*self._signers)
        return record.executor

    def discard(self, record: WorkerRecord) -> None:
        """The worker is gone: close its executor, if it has one, in the background."""
        if record.executor is None:
            return
        executor, record.executor = record.executor, None
        if self._ctx.tg is not None:
            self._ctx.tg.start_soon(self._close, executor)
        else:  # pragma: no cover - the pool stopped meanwhile
            self._closing.append(executor)

    async def _close(self, executor: Executor) -> None:
        self._closing.append(executor)
        try:
            with anyio.move_on_after(CLOSE_LIMIT):
                await executor.close()
        except Exception as exc:  # closing is best effort; the pool closes again on exit
            self._ctx.logger.debug("closing an executor failed: %s", printable(str(exc)))
        else:
            with contextlib.suppress(ValueError):
                self._closing.remove(executor)

    async def close_all(self, records: Iterable[WorkerRecord]) -> None:
        """The pool stops: close the executors of ``records`` and every close
        left unfinished, shielded from the pool's own cancellation, in at most
        ``CLOSE_LIMIT`` seconds for all. Errors are ignored."""
        for record in records:
            if record.executor is not None:
                self._closing.append(record.executor)
                record.executor = None
        closing, self._closing = self._closing, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_LIMIT):
            for executor in closing:
                with contextlib.suppress(Exception):
                    await executor.close()
