"""A base class that gives every InstanceSet its lifecycle."""

from __future__ import annotations

import abc
import enum
from typing import Self

import asyncssh

from ._protocols import Instance
from ._types import ImageID, InitCommand, InstanceQuotaGroup, InstanceTags, InstanceType

__all__ = ["InstanceSetBase"]


class _SetState(enum.Enum):
    OPEN = "open"  # usable
    STOPPED = "stopped"  # stop() was called; every further call is a mistake


class InstanceSetBase(abc.ABC):
    """Base class for InstanceSet implementations.

    It makes the set an async context manager whose exit awaits :meth:`stop`,
    makes ``stop`` idempotent (subclasses implement :meth:`_stop`), and offers
    :meth:`_check_open` so that use after ``stop`` is a clear RuntimeError.
    """

    def __init__(self) -> None:
        self._state = _SetState.OPEN

    def _check_open(self) -> None:
        if self._state is not _SetState.OPEN:
            raise RuntimeError(f"{type(self).__name__} is stopped and cannot be used")

    @abc.abstractmethod
    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance: ...

    @abc.abstractmethod
    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]: ...

    @abc.abstractmethod
    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup: ...

    async def stop(self) -> None:
        """Stop the set's background work; see :meth:`cloudvm.InstanceSet.stop`."""
        if self._state is _SetState.STOPPED:
            return
        self._state = _SetState.STOPPED
        await self._stop()

    async def _stop(self) -> None:  # noqa: B027 - an optional hook
        """Release what the subclass holds. Called once, by :meth:`stop`."""

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
