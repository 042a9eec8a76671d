"""The contract between dispatchers, drivers and executors.

Each Protocol's docstring is its contract: what callers may rely on and what
implementations must guarantee. All of them are ``runtime_checkable``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import asyncssh

from ._types import (
    ImageID,
    InitCommand,
    InstanceID,
    InstancePrice,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)

if TYPE_CHECKING:  # prometheus_client is optional
    import prometheus_client

__all__ = ["Driver", "Executor", "ExecutorTarget", "Instance", "InstanceSet"]


@runtime_checkable
class ExecutorTarget(Protocol):
    """Something an Executor can reach over SSH and prove the identity of.

    Implementations must be safe to use concurrently from many tasks.
    """

    @property
    def address(self) -> str:
        """Where the SSH server listens: ``"host"`` or ``"host:port"``.

        The empty string means "not known yet" (the instance is booting);
        callers must re-list to see a later address, since an object's address
        may be a snapshot.
        """
        ...

    @property
    def remote_user(self) -> str:
        """The user to log in as. It is root or has passwordless sudo."""
        ...

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove that ``key`` is this target's own SSH host key.

        ``conn`` is the live, authenticated connection that presented ``key``;
        an implementation may open channels on it (for instance to the cloud
        metadata service) but must not run commands the caller did not ask for
        and must not close it. ``None`` means no connection is available.

        Returns None when the key is proven to be this target's.

        Raises:
            HostKeyError: the key is not this target's, or the proof failed.
            NotImplementedError: the driver has no way to tell (the caller
                decides whether to trust on first use).
        """
        ...


@runtime_checkable
class Instance(ExecutorTarget, Protocol):
    """One VM instance as a driver sees it, at the time of a listing or create.

    Successive listings may or may not return the same object for the same
    instance: callers must de-duplicate by :attr:`id`. Safe to use concurrently.
    """

    @property
    def id(self) -> InstanceID:
        """The provider's id of the instance, stable for the instance's life."""
        ...

    @property
    def provider_type(self) -> str:
        """The provider's instance type (``"m5.large"``), as created."""
        ...

    @property
    def tags(self) -> InstanceTags:
        """A copy of the instance's tags as of the listing or creation that
        produced this object. Changing the copy changes nothing."""
        ...

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace all of the instance's tags with ``tags``.

        The driver's own bookkeeping tags (the InstanceSetID, secrets) are kept:
        an instance never leaves its set by a ``set_tags``. Raises ValueError for
        invalid tags before any cloud call, and CloudError subclasses for
        provider failures; after an error the tags may be either old or new.
        """
        ...

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """The instance's known prices, newest first, including the cost of
        any added scratch disks. Empty when the driver cannot know."""
        ...

    async def destroy(self) -> None:
        """Shut the instance down and delete it and the resources created for
        it (disks, NICs). Destroying an instance that is already gone is not an
        error. Raises CloudError subclasses for provider failures, in which
        case the caller should retry later; the instance may still exist."""
        ...

    def __str__(self) -> str:
        """A short human name, usually the provider's instance id."""
        ...


@runtime_checkable
class InstanceSet(Protocol):
    """Manages the set of VM instances one dispatcher creates on one provider.

    Every instance it creates carries its InstanceSetID, and it must never
    modify or delete a cloud resource that is not tagged with that id, except
    when the caller calls ``destroy()`` on an instance: so two InstanceSets
    with different ids, even on different hosts, never interfere.

    All methods are safe to call concurrently from many tasks. Cancelling any
    coroutine at any await point leaves no untagged resource behind and the
    InstanceSet consistent. Every InstanceSet is an async context manager whose
    exit awaits :meth:`stop`.
    """

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        """Create one instance and return it (possibly still booting).

        The instance is tagged atomically at creation with ``tags`` plus the
        set's id, so that an instance whose create call was cancelled, timed
        out or lost its response is still found by :meth:`instances`.
        ``init_command`` (under 1 KiB) runs once at first boot. ``public_key``,
        when given, is authorised for the instance's ``remote_user``.

        Invalid input (tags, an over-long init command) raises ValueError
        before any cloud call. Raises RateLimitError, QuotaError or
        CapacityError as the provider answers; after any error an instance may
        nevertheless exist, and a later listing shows it.
        """
        ...

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every instance of this set that carries all of ``tags`` (all of the
        set's instances when ``tags`` is None or empty), booting and
        shutting-down ones included. The list may contain one instance twice;
        callers de-duplicate by ``id``. Raises RateLimitError when throttled.
        """
        ...

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """The quota group ``itype`` draws from. Types in one group run out of
        quota together; preemptible types are in a separate group from
        on-demand ones."""
        ...

    async def stop(self) -> None:
        """Stop the set's own background work and release its clients. Running
        instances keep running: they are cloud resources, and a later set with
        the same id finds them. Calling it twice is harmless; the set must not
        be used afterwards."""
        ...

    async def __aenter__(self) -> InstanceSet: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class Driver(Protocol):
    """Makes InstanceSets for one cloud. Drivers are found by name with
    :func:`cloudvm.load_driver`; :func:`cloudvm.driver_func` turns a plain
    coroutine function into a Driver."""

    async def instance_set(
        self,
        config: Mapping[str, Any] | str | bytes,
        id: InstanceSetID,
        tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> InstanceSet:
        """Return a new InstanceSet with the given id.

        ``config`` is a mapping or a JSON document; it is validated before any
        cloud call and a mistake raises :class:`cloudvm.ConfigError` naming the
        field. ``tags`` go on the long-lived shared resources the set creates.
        ``logger`` receives the set's log records (never secrets). When
        ``registry`` is given the set registers its metrics there.
        """
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs commands on one ExecutorTarget over SSH, after proving the host.

    An executor never runs a command on a connection whose host key has not
    passed ``target.verify_host_key``. Safe to use concurrently from many tasks.
    """

    def set_signers(self, *keys: asyncssh.SSHKey) -> None:
        """Use these private keys to log in from the next connection on."""
        ...

    def set_target(self, target: ExecutorTarget) -> None:
        """Run later commands on ``target``. A different target closes the
        current connection and forgets the verified host key."""
        ...

    @property
    def target(self) -> ExecutorTarget | None:
        """The current target, or None before one is set."""
        ...

    async def execute(
        self,
        cmd: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[bytes, bytes]:
        """Run ``cmd`` through the remote user's shell and return
        ``(stdout, stderr)``.

        ``stdin`` is fed to the command and then closed (None: no input).
        ``env`` variables are set for the command only.

        Raises:
            ExecuteError: the command exited non-zero (carries the output).
            HostKeyError: the host could not be proven to be the target.
            TimeoutError: connecting, logging in or the command took too long.
            OSError / asyncssh.Error: the host could not be reached.
        """
        ...

    async def close(self) -> None:
        """Close every connection; later ``execute`` calls raise RuntimeError."""
        ...
