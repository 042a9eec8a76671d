"""Fixtures for the Azure driver's tests: a fake ARM server over HTTPS and a
credential that never talks to a real tenant."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import cloudvm_azure
import pytest
from azure.core.credentials import AccessToken
from azure_fake_arm import FakeARM

from cloudvm import InstanceSetID

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000a1"
GROUP = "cloudvm-test"
SET_ID = InstanceSetID("set-one")
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


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` (the state of a server or of a background task)
    until it holds, failing with TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the state lives in another component
            await anyio.sleep(0.01)


class FakeCredential:
    """The async ``get_token`` protocol, answering a fixed token."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-arm-token", int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@pytest.fixture
async def arm() -> AsyncIterator[FakeARM]:
    async with FakeARM() as server:
        yield server


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


def make_config(arm: FakeARM, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "subscription_id": SUBSCRIPTION,
        "resource_group": GROUP,
        "location": "westeurope",
        "network": "vnet1",
        "subnet": "default",
        "base_url": arm.base_url,
        "connection_verify": False,
        "admin_username": "crunch",
        "lro_polling_interval": 0,
        "sweep_interval": None,
    }
    config.update(overrides)
    return config


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
