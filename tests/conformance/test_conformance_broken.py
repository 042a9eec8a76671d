"""Deliberately broken drivers fail the conformance kit, and the failure names
the step and says what is wrong.

Each double wraps the fake cloud (SSH on) and breaks one promise of the
contract; the rest of the run still passes, so the verdict is specific.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import asyncssh
import pytest

import cloudvm
from cloudvm import (
    ImageID,
    InitCommand,
    Instance,
    InstanceQuotaGroup,
    InstanceSet,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from cloudvm.driverkit import (
    SET_ID_TAG,
    DelegatingInstance,
    InstanceSetBase,
    validate_init_command,
    validate_tags,
)
from cloudvm.testing import FakeCloud
from cloudvm.testing.conformance import (
    STEP_CANCELLATION,
    STEP_HOST_KEY,
    STEP_SET_TAGS,
    STEP_TAG_FILTER,
    STEP_TAGS_EXACT,
    ConformanceConfig,
    StepStatus,
    run_conformance,
)

from .conftest import FAKE_SMALL

if TYPE_CHECKING:
    import prometheus_client


class BrokenInstance(DelegatingInstance):
    """Delegates to a real instance, except where a flaw says otherwise."""

    def __init__(self, inner: Instance, instance_set: BrokenSet) -> None:
        super().__init__(inner)
        self._set = instance_set

    @property
    def tags(self) -> InstanceTags:
        if self._set.flaw == "leaky-tags":  # shows the driver's own bookkeeping tag
            return {**self._wrapped.tags, SET_ID_TAG: self._set.set_id}
        return self._wrapped.tags

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        if self._set.flaw == "accepts-any-host":
            return None  # "verified", whoever the host is
        if self._set.flaw == "trusts-any-connection":
            if conn is None:
                raise NotImplementedError("needs a connection")
            return None  # never asks the host to prove anything
        await self._wrapped.verify_host_key(key, conn)


class BrokenSet(InstanceSetBase):
    """An InstanceSet with one flaw (see the tests for each)."""

    def __init__(self, inner: InstanceSet, set_id: str, flaw: str) -> None:
        super().__init__()
        self._inner = inner
        self.set_id = set_id
        self.flaw = flaw

    async def create(
        self,
        itype: InstanceType,
        image_id: ImageID,
        tags: InstanceTags,
        init_command: InitCommand,
        public_key: asyncssh.SSHKey | None,
    ) -> Instance:
        if self.flaw != "tags-after-create":
            instance = await self._inner.create(itype, image_id, tags, init_command, public_key)
            return BrokenInstance(instance, self)
        # Creates untagged, then tags in a second call: a cancellation in
        # between leaves an instance without the caller's tags.
        checked = validate_tags(tags)
        validate_init_command(init_command)
        with anyio.CancelScope(shield=True):  # the provider's call completes
            instance = await self._inner.create(itype, image_id, {}, init_command, public_key)
        await anyio.lowlevel.checkpoint()
        await instance.set_tags(checked)
        return BrokenInstance(instance, self)

    async def instances(self, tags: InstanceTags | None = None) -> list[Instance]:
        wanted = None if self.flaw == "ignores-filter" else tags
        return [BrokenInstance(i, self) for i in await self._inner.instances(wanted)]

    def instance_quota_group(self, itype: InstanceType) -> InstanceQuotaGroup:
        return self._inner.instance_quota_group(itype)

    async def _stop(self) -> None:
        await self._inner.stop()


def broken_driver(cloud: FakeCloud, flaw: str) -> cloudvm.Driver:
    async def new_set(
        config: Mapping[str, Any] | str | bytes,
        id: InstanceSetID,
        tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> InstanceSet:
        return BrokenSet(await cloud.instance_set(id, tags, logger), id, flaw)

    return cloudvm.driver_func(new_set)


@pytest.fixture
async def ssh_cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud({"ssh": True, "rate_limits": None}) as cloud:
        yield cloud


async def run_broken(cloud: FakeCloud, key: asyncssh.SSHKey, flaw: str) -> dict[str, str]:
    """Run the kit on a driver with ``flaw``; return the failed steps' messages."""
    config = ConformanceConfig(
        driver=broken_driver(cloud, flaw),
        image_id=ImageID("ami-fake"),
        instance_type=FAKE_SMALL,
        ssh_key=key,
        boot_timeout=10,
        destroy_timeout=10,
        settle_timeout=0.5,
        poll_interval=0.02,
        cancel_delays=(0.0, 0.001),
    )
    report = await run_conformance(config)
    assert not report.ok
    assert cloud.instance_ids() == [], "the kit must clean up even after failures"
    assert str(report).count("FAIL ") == len(report.failed)
    return {step.name: step.message for step in report.failed if step.status is StepStatus.FAILED}


async def test_tags_that_show_the_set_id_fail_tags_exact(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    failed = await run_broken(ssh_cloud, client_key, "leaky-tags")
    assert STEP_TAGS_EXACT in failed
    assert "unexpected keys 'cloudvm-instance-set'" in failed[STEP_TAGS_EXACT]


async def test_create_that_tags_later_fails_on_cancellation(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    failed = await run_broken(ssh_cloud, client_key, "tags-after-create")
    assert list(failed) == [STEP_CANCELLATION]
    assert "instances without the run tag exist" in failed[STEP_CANCELLATION]


async def test_listing_that_ignores_the_tag_filter_fails(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    failed = await run_broken(ssh_cloud, client_key, "ignores-filter")
    assert STEP_TAG_FILTER in failed
    assert "must list only instances with all tags" in failed[STEP_TAG_FILTER]
    assert "the old tag was kept" in failed[STEP_SET_TAGS]


async def test_host_key_check_that_accepts_anything_fails(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    failed = await run_broken(ssh_cloud, client_key, "accepts-any-host")
    assert list(failed) == [STEP_HOST_KEY]
    assert "accepted a random key" in failed[STEP_HOST_KEY]


async def test_host_key_check_that_trusts_any_connection_fails(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    failed = await run_broken(ssh_cloud, client_key, "trusts-any-connection")
    assert list(failed) == [STEP_HOST_KEY]
    assert "accepted an impostor SSH server" in failed[STEP_HOST_KEY]
