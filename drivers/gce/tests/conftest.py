"""Fixtures for the GCE driver's tests: a local Compute API and a set on it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from cloudvm_gce import DRIVER, _operations
from gce_fake_api import FakeCompute
from gce_helpers import gce_config

import cloudvm
from cloudvm import InstanceSetID

_CLOUD_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "CLOUDSDK_")


@pytest.fixture(autouse=True)
def _clean_environ() -> Iterator[None]:
    """No developer's cloud credentials or SDK settings reach a test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(_CLOUD_ENV_PREFIXES)}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _quick_first_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local API's operations are done after a poll or a few, not after
    GCE's seconds: the first poll comes sooner (the growth and the cap stay)."""
    monkeypatch.setattr(_operations, "FIRST_POLL_INTERVAL", 0.02)


@pytest.fixture
async def fake_gce() -> AsyncIterator[FakeCompute]:
    """A local Compute API on a free port."""
    fake = await FakeCompute().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def gce_set(fake_gce: FakeCompute) -> AsyncIterator[cloudvm.InstanceSet]:
    """An InstanceSet on the fake; every test must leave no instance behind."""
    iset = await DRIVER.instance_set(
        gce_config(fake_gce), InstanceSetID("set-one"), {}, logging.getLogger("test.gce")
    )
    async with iset:
        yield iset
    assert fake_gce.instances == {}, "the test left instances behind"
