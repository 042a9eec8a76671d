"""Zone operations: waiting for one, and the error a finished one carries.

An operation is waited for from the event loop: short ``zoneOperations.get``
polls (each one short call in a worker thread), at a growing interval
capped at :data:`MAX_POLL_INTERVAL`. No thread is held while an operation
runs, so a listing or another create never waits behind operations, and a
caller cancelled meanwhile leaves at once (after at most the poll in flight:
what it started is tagged and in the cloud for the next listing to see).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import anyio
from google.cloud import compute_v1

from cloudvm import CloudError, RateLimitError

from ._api import Clients, ComputeAPI, TransportError
from ._config import GCEConfig
from ._errors import classify

__all__ = [
    "DONE",
    "FIRST_POLL_INTERVAL",
    "MAX_POLL_INTERVAL",
    "POLL_GROWTH",
    "Operations",
    "operation_error",
]

DONE = compute_v1.Operation.Status.DONE
#: The first poll comes this soon after the call that started the operation;
#: each later one waits ``POLL_GROWTH`` times longer, up to ``MAX_POLL_INTERVAL``.
# (No GCE operation is done much sooner; every poll costs a call's CPU.)
FIRST_POLL_INTERVAL = 0.2  # seconds
POLL_GROWTH = 1.6
MAX_POLL_INTERVAL = 1.5  # seconds


def operation_error(op: compute_v1.Operation, what: str) -> CloudError | None:
    """The cloudvm error a finished operation carries, or None if it succeeded."""
    errors = list(op.error.errors) if "error" in op else []
    if not errors:
        return None
    codes = [str(e.code) for e in errors]
    message = f"GCE {what} failed: " + "; ".join(f"{e.code}: {e.message}" for e in errors)
    status = int(op.http_error_status_code) if op.http_error_status_code else None
    wrapped = classify(codes, message, http_status=status)
    return wrapped or CloudError(message, code=codes[0])


class Operations:
    """Waits for the zone operations of one InstanceSet's calls."""

    def __init__(
        self,
        config: GCEConfig,
        api: ComputeAPI,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._config = config
        self._api = api
        self._logger = logger

    async def wait(self, zone: str, op: compute_v1.Operation) -> compute_v1.Operation:
        """Poll ``op`` with our own ZoneOperationsClient until it is DONE or
        ``operation_timeout`` passes; return its last state. (An extended
        operation's ``result()`` would poll Google's host, not ours.) A poll
        that got no answer is not an error: the next one asks again; a
        throttled one waits until the API allows the next. Raises the
        cloudvm error of a poll the API refused otherwise."""
        cfg = self._config
        deadline = anyio.current_time() + cfg.operation_timeout
        name = op.name
        interval = FIRST_POLL_INTERVAL
        while op.status != DONE:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                self._logger.warning(
                    "GCE operation %s is not done after %s s",
                    name,
                    cfg.operation_timeout,
                    extra={"operation": name, "zone": zone},
                )
                return op
            await anyio.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, MAX_POLL_INTERVAL)

            def poll(c: Clients) -> compute_v1.Operation:
                return c.operations.get(
                    project=cfg.project,
                    zone=zone,
                    operation=name,
                    retry=None,
                    timeout=cfg.call_timeout,
                )

            try:
                op = await self._api.call("zoneOperations.get", poll)
            except TransportError:
                pass  # no answer: the next poll asks again
            except RateLimitError as exc:
                # The operation runs on whether we ask or not: ask again once
                # the API allows, rather than fail a call that took effect.
                pause = (exc.earliest_retry - datetime.now(UTC)).total_seconds()
                self._logger.debug(
                    "GCE polls of operation %s throttled; asking again in %.1f s",
                    name,
                    pause,
                    extra={"operation": name, "zone": zone, "code": exc.code},
                )
                await anyio.sleep(max(0.0, min(pause, deadline - anyio.current_time())))
        return op

    async def finish(self, zone: str, op: compute_v1.Operation, what: str) -> None:
        """Wait for ``op``; raise the error it finished with, if any."""
        op = await self.wait(zone, op)
        if op.status == DONE:
            error = operation_error(op, what)
            if error is not None:
                raise error
