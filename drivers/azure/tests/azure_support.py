"""Constants and helpers shared by the Azure driver's tests (conftest.py holds
the fixtures). A module of its own: every test folder has a conftest.py, so
``from conftest import ...`` would find whichever was imported first."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from azure.core.credentials import AccessToken
from azure_fake_arm import FakeARM

from cloudvm import InstanceSetID

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000a1"
GROUP = "cloudvm-test"
SET_ID = InstanceSetID("set-one")


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
