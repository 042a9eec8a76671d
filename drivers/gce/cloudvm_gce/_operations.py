"""Zone operations: waiting for one, and the error a finished one carries."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from google.cloud import compute_v1

from cloudvm import CloudError

from ._api import Clients, ComputeAPI, TransportError
from ._config import GCEConfig
from ._errors import classify

__all__ = ["DONE", "Operations", "operation_error"]

DONE = compute_v1.Operation.Status.DONE
# How long one zoneOperations.wait call may take: the API holds it up to 2 min.
_WAIT_CALL_TIMEOUT = 150.0  # seconds
_WAIT_RETRY_DELAY = 1.0  # seconds before asking again after a failed wait call


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
        """Wait with our own ZoneOperationsClient until ``op`` is DONE or
        ``operation_timeout`` passes; return its last state. (An extended
        operation's ``result()`` would poll Google's host, not ours.)"""
        cfg = self._config
        deadline = anyio.current_time() + cfg.operation_timeout
        name = op.name
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
            timeout = min(remaining, _WAIT_CALL_TIMEOUT)

            def wait(c: Clients, timeout: float = timeout) -> compute_v1.Operation:
                return c.operations.wait(
                    project=cfg.project, zone=zone, operation=name, retry=None, timeout=timeout
                )

            try:
                op = await self._api.call("zoneOperations.wait", wait)
            except TransportError:
                # The wait call itself timed out or was cut: ask again, without
                # hammering an API that refuses connections.
                await anyio.sleep(min(_WAIT_RETRY_DELAY, max(0.0, remaining)))
        return op

    async def finish(self, zone: str, op: compute_v1.Operation, what: str) -> None:
        """Wait for ``op``; raise the error it finished with, if any."""
        op = await self.wait(zone, op)
        if op.status == DONE:
            error = operation_error(op, what)
            if error is not None:
                raise error
