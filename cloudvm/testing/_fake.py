"""The ``fake`` driver: an in-memory, fault-injecting cloud for tests.

``cloudvm.load_driver("fake")`` returns :data:`DRIVER`. Its config (a mapping
or JSON, every key optional) is :class:`~cloudvm.testing.FakeConfig`; the keys
and their defaults are listed in :mod:`cloudvm.testing._fake_config`. The
``cloud`` key names a process-wide :class:`~cloudvm.testing.FakeCloud`: the
first set naming it creates it from the config; later sets join it, and may
give other keys only with the values the cloud already has.

Tests that want a cloud of their own construct a ``FakeCloud`` (with a
:class:`~cloudvm.testing.ManualClock` to control time) and make sets with
:meth:`FakeCloud.instance_set` or through :attr:`FakeCloud.driver`.

Like every driver, bad input (tags, init command, types) raises before the
call reaches the cloud, so it never appears in the call log. Instances hide
the reserved ``cloudvm-`` tags: ``tags`` is exactly the user's.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncssh

from .._arguments import SetArguments, check_create_arguments, config_driver
from .._base import InstanceSetBase
from .._instance_base import InstanceBase
from .._metadata import verify_with_imdsv2
from .._metrics import CallMetrics
from .._protocols import Instance
from .._types import (
    ImageID,
    InitCommand,
    InstancePrice,
    InstanceQuotaGroup,
    InstanceSetID,
    InstanceTags,
    InstanceType,
)
from .._validate import validate_tags
from ._fake_cloud import _VM, FakeCloud, named_cloud
from ._fake_config import FakeConfig

__all__ = ["DRIVER", "FakeInstance", "FakeInstanceSet"]


class FakeInstance(InstanceBase):
    """One fake instance, as of the listing or create that produced it.

    ``tags`` and ``address`` are snapshots: re-list to see later changes.
    ``address`` is "" until the cloud's ``boot_delay`` has passed; then it is
    the instance's SSH server (``127.0.0.1:<port>``) when the cloud has
    ``ssh``, else an unreachable address in 198.18.0.0/15.
    """

    def __init__(
        self, instance_set: FakeInstanceSet, vm: _VM, tags: InstanceTags, address: str
    ) -> None:
        super().__init__(
            id=vm.id,
            provider_type=vm.provider_type,
            all_tags=tags,
            address=address,
            remote_user=vm.remote_user,
        )
        self._set = instance_set
        self._vm = vm

    async def set_tags(self, tags: InstanceTags) -> None:
        """Replace the instance's tags. Listings see them after the cloud's
        ``tag_delay``; this object's ``tags`` and the instance's metadata
        service see them at once. Raises ValueError for invalid tags before any
        call, InjectedError / LostResponseError / RateLimitError as the knobs
        say, and CloudError (code ``InvalidInstanceID.NotFound``) when the
        instance no longer exists."""
        checked = validate_tags(tags)
        self._replace_user_tags(await self._set._set_tags(self, checked))

    def price_history(self, itype: InstanceType) -> list[InstancePrice]:
        """One price, the type's, since the instance was created."""
        return [InstancePrice(self._vm.created, itype.price)]

    async def destroy(self) -> None:
        """Delete the instance (and stop its SSH server); a no-op if it is gone.
        May raise InjectedError (nothing happened), LostResponseError (it is
        gone) or RateLimitError."""
        await self._set._destroy(self)

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        """Prove the host as the loopback driver does: through ``conn``, ask
        169.254.169.254 (IMDSv2) for the instance id and the ``cloudvm-secret``
        tag and compare them with what create recorded.

        Raises:
            HostKeyError: they differ or cannot be read.
            NotImplementedError: ``conn`` is None, or the cloud has no ``ssh``
                (there is no host to prove).
        """
        if not self._vm.ssh:
            raise NotImplementedError("this fake instance has no SSH server (ssh is off)")
        if conn is None:
            raise NotImplementedError("fake instances verify host keys only through a connection")
        await verify_with_imdsv2(
            conn, instance_id=self._vm.id, secret=self._vm.secret, who=str(self)
        )


class FakeInstanceSet(InstanceSetBase):
    """An InstanceSet in a :class:`~cloudvm.testing.FakeCloud`.

    Made by :meth:`FakeCloud.instance_set` or the ``fake`` driver. Calls after
    :meth:`stop` raise RuntimeError and are reported to the cloud as misuse.
    """

    def __init__(
        self,
        cloud: FakeCloud,
        set_id: InstanceSetID,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        metrics: CallMetrics,
    ) -> None:
        super().__init__()
        self._cloud = cloud
        self._id = set_id
        self._logger = logger
        self._metrics = metrics

    @property
    def cloud(self) -> FakeCloud:
        """The cloud this set lives in."""
        return self._cloud

    @property
    def id(self) -> InstanceSetID:
        """The set's InstanceSetID."""
        return self._id

    def _check_usable(self, operation: str, instance_id: str | None = None) -> None:
        try:
            self._check_open()
        except RuntimeError as exc:
            self._cloud.report_misuse(
                "use-after-stop", f"{operation}: {exc}", self._id, instance_id
            )
            raise

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> FakeInstance:
        """Create an instance tagged with ``tags`` (and the set id).

        Returns at once (after the cloud's create latency); ``address`` is ""
        until ``boot_delay`` has passed. With ``ssh``, the instance's SSH server
        authorises ``public_key`` for ``remote_user`` and ``init_command`` has
        run in the server's work directory before this returns.

        Raises:
            ValueError / TypeError: invalid input, before any call.
            RateLimitError: the create bucket is empty (nothing was created).
            CapacityError: a configured shortage (nothing was created).
            QuotaError: the quota group is full (nothing was created).
            InjectedError: the failure rate struck (nothing was created).
            LostResponseError: the instance WAS created; a listing shows it.
        """
        self._check_usable("create")
        args = check_create_arguments(itype, image_id, tags, init_command, public_key)
        call_args = {
            "instance_type": itype.provider_type,
            "image_id": image_id,
            "tags": dict(args.tags),
            "public_key": public_key is not None,
        }
        with self._metrics.observe("create"):
            vm = await self._cloud._operate(
                "create",
                self._id,
                call_args,
                lambda call: self._cloud._create(
                    call, self._id, itype, args.tags, args.init_command, public_key
                ),
            )
        self._logger.debug(
            "created fake instance %s",
            vm.id,
            extra={"instance_id": vm.id, "instance_set_id": self._id},
        )
        return FakeInstance(self, vm, dict(args.tags), vm.address_at(self._cloud.clock.now()))

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        """Every instance of this set whose listed tags include ``tags``.

        Instances younger than the cloud's ``listing_delay`` are missing, and
        tags changed less than ``tag_delay`` ago show their old values.
        Raises RateLimitError when the list bucket is empty.
        """
        self._check_usable("instances")
        wanted = validate_tags(tags or {})
        with self._metrics.observe("instances"):
            found = await self._cloud._operate(
                "instances",
                self._id,
                {"tags": dict(wanted)},
                lambda call: self._cloud._list(call, self._id, wanted),
            )
        return [FakeInstance(self, vm, itags, address) for vm, itags, address in found]

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        """The cloud's ``quota_groups[provider_type]`` (default "standard"),
        with "-spot" appended for preemptible types."""
        return self._cloud.quota_group(itype)

    async def _set_tags(self, instance: FakeInstance, tags: InstanceTags) -> InstanceTags:
        self._check_usable("set_tags", instance.id)
        with self._metrics.observe("set_tags"):
            return await self._cloud._operate(
                "set_tags",
                self._id,
                {"instance_id": instance.id, "tags": dict(tags)},
                lambda call: self._cloud._set_tags(call, self._id, tags),
                instance_id=instance.id,
            )

    async def _destroy(self, instance: FakeInstance) -> None:
        self._check_usable("destroy", instance.id)
        with self._metrics.observe("destroy"):
            await self._cloud._operate(
                "destroy",
                self._id,
                {"instance_id": instance.id},
                lambda call: self._cloud._destroy(call, self._id),
                instance_id=instance.id,
            )
        self._logger.debug(
            "destroyed fake instance %s",
            instance.id,
            extra={"instance_id": instance.id, "instance_set_id": self._id},
        )

    async def _stop(self) -> None:
        # Instances are cloud resources and outlive the set; the set holds
        # no tasks or clients of its own.
        return None


async def _open_instance_set(args: SetArguments[FakeConfig]) -> FakeInstanceSet:
    cloud = named_cloud(args.config)
    return await cloud.instance_set(args.id, args.tags, args.logger, args.registry)


#: The fake driver; ``cloudvm.load_driver("fake")`` returns it.
DRIVER = config_driver(FakeConfig, _open_instance_set, name="fake")
