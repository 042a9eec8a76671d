"""The fake driver (with SSH on) passes the conformance kit, and the kit's
own behaviour: progress, refusing to run over leftovers, the report."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncssh
import pytest

import cloudvm
import cloudvm.testing.conformance as conformance
from cloudvm.testing import FakeCloud
from cloudvm.testing.conformance import (
    STEP_CREATE,
    STEP_LEFTOVERS,
    STEPS,
    ConformanceConfig,
    ConformanceSuite,
    StepResult,
    StepStatus,
    run_conformance,
)

from .conftest import FAKE_SMALL


def fake_config(driver: cloudvm.Driver, key: asyncssh.SSHKey) -> ConformanceConfig:
    return ConformanceConfig(
        driver=driver,
        image_id=cloudvm.ImageID("ami-fake"),
        instance_type=FAKE_SMALL,
        ssh_key=key,
        boot_timeout=10,
        destroy_timeout=10,
        settle_timeout=5,
        poll_interval=0.02,
        cancel_delays=(0.0, 0.001, 0.01),
    )


@pytest.fixture
async def ssh_cloud() -> AsyncIterator[FakeCloud]:
    # The default, EC2-shaped rate limits stay on: the kit must cope with them.
    async with FakeCloud({"ssh": True, "remote_user": "worker"}) as cloud:
        yield cloud


class TestFakeConformance(ConformanceSuite):
    @pytest.fixture
    def conformance_config(
        self, ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
    ) -> ConformanceConfig:
        return dataclasses.replace(
            fake_config(ssh_cloud.driver, client_key), extra_command="echo $((6 * 7))"
        )


async def test_progress_sees_every_step_in_order(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    seen: list[StepResult] = []
    report = await run_conformance(fake_config(ssh_cloud.driver, client_key), progress=seen.append)
    assert report.ok, str(report)
    assert seen == report.steps
    assert [step.name for step in seen] == list(STEPS)
    assert ssh_cloud.instance_ids() == []  # the kit destroyed everything it made
    text = str(report)
    assert text.startswith(f"cloudvm conformance for instance set {report.instance_set_id}: PASSED")
    assert "PASS  create" in text
    assert "SKIP  extra command" in text  # none was given


async def test_refuses_to_run_over_existing_instances(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    set_id = cloudvm.InstanceSetID("busy")
    busy = await ssh_cloud.instance_set(set_id)
    old = await busy.create(
        FAKE_SMALL, cloudvm.ImageID("ami"), {"k": "v"}, cloudvm.InitCommand(""), None
    )
    config = dataclasses.replace(fake_config(ssh_cloud.driver, client_key), instance_set_id=set_id)

    report = await run_conformance(config)
    assert not report.ok
    leftovers = report.step(STEP_LEFTOVERS)
    assert leftovers is not None and leftovers.status is StepStatus.FAILED
    assert old.id in leftovers.message and "destroy_existing" in leftovers.message
    create = report.step(STEP_CREATE)
    assert create is not None and create.status is StepStatus.NOT_RUN
    assert ssh_cloud.instance_ids() == [old.id]  # untouched

    report = await run_conformance(dataclasses.replace(config, destroy_existing=True))
    assert report.ok, str(report)
    assert ssh_cloud.instance_ids() == []


async def test_unknown_driver_fails_the_first_step_by_name(client_key: asyncssh.SSHKey) -> None:
    config = dataclasses.replace(
        fake_config(cloudvm.load_driver("fake"), client_key), driver="nope"
    )
    report = await run_conformance(config)
    assert not report.ok
    assert report.steps[0].status is StepStatus.FAILED
    assert "no cloudvm driver named 'nope'" in report.steps[0].message
    assert {step.status for step in report.steps[1:]} == {StepStatus.NOT_RUN}


def test_config_rejects_nonsense_timeouts(client_key: asyncssh.SSHKey) -> None:
    with pytest.raises(ValueError, match="boot_timeout"):
        dataclasses.replace(fake_config(cloudvm.load_driver("fake"), client_key), boot_timeout=0)


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(conformance).items()
        if not name.startswith("_") and not isinstance(value, type(conformance))
    }
    assert set(conformance.__all__) == public | {"ConformanceSuite"}
    assert conformance.ConformanceSuite is ConformanceSuite


async def test_a_run_cancelled_by_task_cancel_still_destroys_what_it_made(
    ssh_cloud: FakeCloud, client_key: asyncssh.SSHKey
) -> None:
    # As Ctrl-C in `cloudvm cloudtest` does: asyncio cancels the run's task,
    # which an anyio shield would not stop; the clean-up must finish anyway.
    created = asyncio.Event()

    def progress(result: StepResult) -> None:
        if result.name == STEP_CREATE:
            created.set()

    config = fake_config(ssh_cloud.driver, client_key)
    run = asyncio.ensure_future(run_conformance(config, progress=progress))
    await created.wait()
    assert ssh_cloud.instance_ids() != []
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert ssh_cloud.instance_ids() == []
