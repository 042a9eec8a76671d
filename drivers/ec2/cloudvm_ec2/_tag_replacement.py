"""Replacing an instance's tags so that it ends with its old tags or its new
ones, never a mix, whatever cancellation, throttling or lost answers happen
between the two calls it takes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from cloudvm import CloudError, InstanceID, InstanceSetID, InstanceTags, RateLimitError
from cloudvm.driverkit import RESERVED_TAG_PREFIX, SET_ID_TAG, run_critical

from ._calls import GONE_CODES, LOST_RESPONSE_PAUSE, EC2Calls, Response, answered
from ._errors import CallKind
from ._tags import TagChange, plan_tag_change, tag_list

__all__ = ["TagReplacer"]

_Step = Callable[[], Awaitable[Response]]


class TagReplacer:
    """Replaces the caller's tags of the instances of one InstanceSet.

    ``timeout`` (seconds) bounds how long a throttled or unanswered second
    call, and then the way back, is repeated.
    """

    def __init__(
        self,
        calls: EC2Calls,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        set_id: InstanceSetID,
        timeout: float,
    ) -> None:
        self._calls = calls
        self._logger = logger
        self._set_id = set_id
        self._timeout = timeout

    async def replace(self, instance_id: InstanceID, tags: InstanceTags) -> None:
        """Make the caller's tags of ``instance_id`` exactly ``tags`` (already
        checked); the set's own tags stay. Reads the current tags first and
        refuses (CloudError) an instance without this set's id. Once the
        first change is made, the rest is made (or undone) even if the
        caller is cancelled meanwhile; the cancellation is re-raised after."""
        current: dict[str, str] = {}
        async for page in self._calls.pages(
            "DescribeTags",
            CallKind.OTHER,
            self._calls.client.describe_tags,
            Filters=[{"Name": "resource-id", "Values": [instance_id]}],
        ):
            current.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        if current.get(SET_ID_TAG) != self._set_id:
            raise CloudError(
                f"EC2 instance {instance_id} does not carry this InstanceSet's id "
                "(gone, or another set's); its tags are left alone"
            )
        old = {k: v for k, v in current.items() if not k.startswith(RESERVED_TAG_PREFIX)}
        forward, back = plan_tag_change(old, tags)
        # Once the first call is made, the second must follow (or the first
        # be undone) whoever cancels the caller.
        await run_critical(lambda: self._change(instance_id, forward, back))

    async def _change(self, instance_id: InstanceID, forward: TagChange, back: TagChange) -> None:
        """Apply ``forward`` (CreateTags, then DeleteTags); if the second call
        cannot be made, or the first may have been applied without an answer,
        repeat it until the timeout, then apply ``back``."""
        steps = self._steps(instance_id, forward)
        if not steps:
            return
        try:
            await steps[0]()
        except CloudError as exc:
            # One call is all or nothing, and a refused call changed nothing.
            if len(steps) == 1 or answered(exc):
                raise
        else:
            steps = steps[1:]
        try:
            await _persist(steps, anyio.current_time() + self._timeout)
        except CloudError as exc:
            if exc.code in GONE_CODES:
                raise
            self._logger.warning(
                "EC2 instance %s: cannot finish replacing its tags (%s); putting the old ones back",
                instance_id,
                exc,
                extra={"instance_id": instance_id, "instance_set_id": self._set_id},
            )
            try:
                await _persist(self._steps(instance_id, back), anyio.current_time() + self._timeout)
            except CloudError as undo_exc:
                raise CloudError(
                    f"EC2 instance {instance_id} has neither its old nor its new tags: "
                    f"{exc}; putting the old ones back failed too: {undo_exc}",
                    code=exc.code,
                ) from exc
            raise

    def _steps(self, instance_id: InstanceID, change: TagChange) -> list[_Step]:
        calls = self._calls
        steps: list[_Step] = []
        if change.put:
            steps.append(
                functools.partial(
                    calls.call,
                    "CreateTags",
                    CallKind.OTHER,
                    calls.client.create_tags,
                    Resources=[instance_id],
                    Tags=tag_list(change.put),
                )
            )
        if change.drop:
            steps.append(
                functools.partial(
                    calls.call,
                    "DeleteTags",
                    CallKind.OTHER,
                    calls.client.delete_tags,
                    Resources=[instance_id],
                    Tags=[{"Key": k} for k in change.drop],
                )
            )
        return steps


async def _persist(steps: list[_Step], deadline: float) -> None:
    """Make each (idempotent) call in turn, repeating one that was throttled
    (after EC2's hold-off) or got no answer, as long as the repeat can start
    before ``deadline``."""
    for step in steps:
        while True:
            try:
                await step()
                break
            except RateLimitError as exc:
                error: CloudError = exc
                wait = (exc.earliest_retry - datetime.now(UTC)).total_seconds()
            except CloudError as exc:
                if answered(exc):
                    raise
                error, wait = exc, LOST_RESPONSE_PAUSE
            if anyio.current_time() + wait > deadline:
                raise error
            await anyio.sleep(max(wait, 0.0))
