"""Fixtures for the Azure driver's tests: a fake ARM server over HTTPS and a
credential that never talks to a real tenant."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Iterator

import cloudvm_azure
import pytest
from azure_fake_arm import FakeARM
from azure_support import SET_ID, FakeCredential, make_config

_CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "MSI_", "IDENTITY_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's cloud credentials never reach a test."""
    for name in list(os.environ):
        if name.startswith(_CREDENTIAL_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect garbage after each test, so that an aiohttp session left
    unclosed warns (ResourceWarning, an error here) in the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture
async def arm() -> AsyncIterator[FakeARM]:
    async with FakeARM() as server:
        yield server


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("cloudvm.test.azure")


@pytest.fixture
async def iset(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> AsyncIterator[cloudvm_azure.AzureInstanceSet]:
    instance_set = await cloudvm_azure.open_instance_set(
        make_config(arm), SET_ID, {"owner": "tests"}, logger, credential=credential
    )
    async with instance_set:
        yield instance_set
