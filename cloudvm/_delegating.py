"""An Instance that forwards everything to another: the base of wrappers."""

from __future__ import annotations

from typing import Any

import asyncssh

from ._protocols import Instance
from ._types import InstanceID, InstancePrice, InstanceTags, InstanceType

__all__ = ["DelegatingInstance"]


class DelegatingInstance:
    """An :class:`~cloudvm.Instance` that forwards every property and method to
    :attr:`wrapped`, unchanged. Wrappers (a retry layer, a test harness)
    subclass it and override only what they change, so that what they leave
    alone — ``verify_host_key`` above all — is the wrapped instance's own.

    Driver-specific public attributes of the wrapped instance are reachable
    too; private ones (leading underscore) are not.
    """

    def __init__(self, wrapped: Instance) -> None:
        self._wrapped = wrapped

    @property
    def wrapped(self) -> Instance:
        """The instance this one forwards to."""
        return self._wrapped

    @property
    def id(self) -> InstanceID:
        return self._wrapped.id

    @property
    def provider_type(self) -> str:
        return self._wrapped.provider_type

    @property
    def tags(self) -> InstanceTags:
        return self._wrapped.tags

    @property
    def address(self) -> str:
        return self._wrapped.address

    @property
    def remote_user(self) -> str:
        return self._wrapped.remote_user

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        await self._wrapped.verify_host_key(key, conn)

    async def set_tags(self, tags: InstanceTags) -> None:
        await self._wrapped.set_tags(tags)

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        return self._wrapped.price_history(itype)

    async def destroy(self) -> None:
        await self._wrapped.destroy()

    def __getattr__(self, name: str) -> Any:
        # Private names are never forwarded, which also keeps a half-built
        # object from recursing here.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __str__(self) -> str:
        return str(self._wrapped)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._wrapped!r}>"
