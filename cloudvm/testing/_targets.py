"""An ExecutorTarget that is one instance, reached at another address."""

from __future__ import annotations

import asyncssh

from .._protocols import ExecutorTarget

__all__ = ["RedirectedTarget"]


class RedirectedTarget:
    """``instance``'s identity, reached at ``address`` instead of its own.

    The contract: :attr:`address` is ``address``, always; :attr:`remote_user`
    and :meth:`verify_host_key` are ``instance``'s own, delegated unchanged
    (read and called at each use, never cached). So an executor aimed at it
    connects to ``address`` but proves the host exactly as it would prove
    ``instance``.

    Tests use it two ways: to reach an instance at the in-process server that
    plays its operating system (an :class:`SSHTestServer`), and to show that a
    host which is *not* the instance (another instance's address) is refused
    before any command runs. Safe to use concurrently, as ``instance`` is.

    Parameters:
        instance: the target whose identity is proven (any ExecutorTarget,
            usually an :class:`cloudvm.Instance`).
        address: where to connect, ``"host"`` or ``"host:port"``.
    """

    def __init__(self, instance: ExecutorTarget, address: str) -> None:
        self._instance = instance
        self._address = address

    @property
    def instance(self) -> ExecutorTarget:
        """The target whose identity this one borrows."""
        return self._instance

    @property
    def address(self) -> str:
        """The overriding address given at construction."""
        return self._address

    @property
    def remote_user(self) -> str:
        """The instance's ``remote_user``, as it is now."""
        return self._instance.remote_user

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """The instance's own ``verify_host_key(key, conn)``, with its result
        and errors unchanged."""
        await self._instance.verify_host_key(key, conn)

    def __str__(self) -> str:
        return f"{self._instance} at {self._address}"

    def __repr__(self) -> str:
        return f"RedirectedTarget({self._instance!r}, {self._address!r})"
