"""Shared values for the fake cloud's tests."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from cloudvm import ImageID, InitCommand, Instance, InstanceSetID, InstanceTags, InstanceType
from cloudvm.testing import FakeCloud, FakeInstance, FakeInstanceSet, ManualClock

SMALL = InstanceType(
    name="small",
    provider_type="t3.small",
    vcpus=2,
    ram=2 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.02,
)
LARGE = dataclasses.replace(SMALL, name="large", provider_type="m5.xlarge", vcpus=4, price=0.2)
SPOT = dataclasses.replace(SMALL, name="small-spot", preemptible=True)
IMAGE = ImageID("ami-fake")
NO_INIT = InitCommand("")
SET_A = InstanceSetID("set-a")
SET_B = InstanceSetID("set-b")
LOG = logging.getLogger("tests.fake")


async def create(
    instance_set: FakeInstanceSet,
    itype: InstanceType = SMALL,
    tags: InstanceTags | None = None,
) -> FakeInstance:
    return await instance_set.create(itype, IMAGE, tags or {}, NO_INIT, None)


def fake(instance: Instance) -> FakeInstance:
    assert isinstance(instance, FakeInstance)
    return instance


def ids(instances: list[Instance]) -> list[str]:
    return [instance.id for instance in instances]


def manual_cloud(**config: Any) -> tuple[FakeCloud, ManualClock]:
    """A cloud on a manual clock (no throttling unless the config says so)."""
    clock = ManualClock()
    config.setdefault("rate_limits", None)
    return FakeCloud(config, clock=clock), clock


__all__ = [
    "IMAGE",
    "LARGE",
    "LOG",
    "NO_INIT",
    "SET_A",
    "SET_B",
    "SMALL",
    "SPOT",
    "create",
    "fake",
    "ids",
    "manual_cloud",
]
