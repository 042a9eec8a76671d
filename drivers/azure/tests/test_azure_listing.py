"""Listings read ARM's pages themselves: what they refuse and what they skip.

A scripted ARM endpoint (plain HTTP on loopback, as the config allows)
answers the listing pages each test writes; everything else is an empty page.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import cloudvm_azure
import pytest
from aiohttp import web
from azure_support import GROUP, SET_ID, SUBSCRIPTION, FakeCredential

from cloudvm import CloudError
from cloudvm.driverkit import SET_ID_TAG

_PROVIDERS = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers"
VMS = f"{_PROVIDERS}/Microsoft.Compute/virtualMachines"
NICS = f"{_PROVIDERS}/Microsoft.Network/networkInterfaces"


class ScriptedARM:
    """Answers ``pages[(path, page)]`` (``page`` is the ``page`` query
    parameter, "" for the first) as JSON, or as text when it is a str;
    records every request's path, query and whether it carried a token."""

    def __init__(self) -> None:
        self.pages: dict[tuple[str, str], Any] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        page = request.query.get("page", "")
        self.requests.append((request.path, page, "Authorization" in request.headers))
        body = self.pages.get((request.path, page), {"value": []})
        if isinstance(body, str):
            return web.Response(text=body, content_type="text/html")
        return web.json_response(body)

    async def __aenter__(self) -> ScriptedARM:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedARM]:
    async with ScriptedARM() as server:
        yield server


@pytest.fixture
async def other() -> AsyncIterator[ScriptedARM]:
    async with ScriptedARM() as server:
        yield server


@pytest.fixture
async def listing_set(
    scripted: ScriptedARM, credential: FakeCredential, logger: logging.Logger
) -> AsyncIterator[cloudvm_azure.AzureInstanceSet]:
    config = {
        "subscription_id": SUBSCRIPTION,
        "resource_group": GROUP,
        "location": "westeurope",
        "network": "vnet1",
        "subnet": "default",
        "base_url": scripted.base_url,
        "sweep_interval": None,
    }
    instance_set = await cloudvm_azure.open_instance_set(
        config, SET_ID, {}, logger, credential=credential
    )
    async with instance_set:
        yield instance_set


def _vm(name: str, **tags: str) -> dict[str, Any]:
    nic_id = f"{NICS}/{name}-nic"
    return {
        "name": name,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "networkProfile": {"networkInterfaces": [{"id": nic_id}]},
        },
    }


def _nic(name: str, address: str) -> dict[str, Any]:
    return {
        "id": f"{NICS}/{name}",
        "properties": {
            "ipConfigurations": [{"properties": {"primary": True, "privateIPAddress": address}}]
        },
    }


async def test_a_next_link_to_another_host_is_refused_before_the_token_goes_there(
    scripted: ScriptedARM, other: ScriptedARM, listing_set: cloudvm_azure.AzureInstanceSet
) -> None:
    scripted.pages[(VMS, "")] = {
        "value": [_vm("vm-a", **{SET_ID_TAG: SET_ID})],
        "nextLink": f"{other.base_url}{VMS}?page=2",
    }
    with pytest.raises(CloudError, match="listing virtual machines: a nextLink off"):
        await listing_set.instances()
    assert other.requests == []


async def test_a_next_link_seen_before_ends_the_listing(
    scripted: ScriptedARM, listing_set: cloudvm_azure.AzureInstanceSet
) -> None:
    again = f"{scripted.base_url}{NICS}?page=2"
    scripted.pages[(NICS, "")] = {"value": [], "nextLink": again}
    scripted.pages[(NICS, "2")] = {"value": [], "nextLink": again}
    with anyio.fail_after(20), pytest.raises(CloudError, match="seen before"):
        await listing_set.instances()
    assert [r for r in scripted.requests if r[0] == NICS] == [(NICS, "", True), (NICS, "2", True)]


async def test_a_page_that_is_not_arm_json_is_a_cloud_error(
    scripted: ScriptedARM, listing_set: cloudvm_azure.AzureInstanceSet
) -> None:
    scripted.pages[(VMS, "")] = "<html>a captive portal</html>"
    with pytest.raises(CloudError, match="listing virtual machines: "):
        await listing_set.instances()
    scripted.pages[(VMS, "")] = {"value": {"name": "not a list"}}
    with pytest.raises(CloudError, match="not a page of ARM resources"):
        await listing_set.instances()


async def test_items_that_are_no_resources_are_skipped_and_pages_are_followed(
    scripted: ScriptedARM, listing_set: cloudvm_azure.AzureInstanceSet
) -> None:
    ours = {SET_ID_TAG: SET_ID, "job": "a"}
    untagged = _vm("vm-untagged")
    del untagged["tags"]
    scripted.pages[(VMS, "")] = {
        "value": [1, "vm-x", None, untagged, {**_vm("vm-odd-tags"), "tags": ["a"]}],
        "nextLink": f"{scripted.base_url}{VMS}?page=2",
    }
    scripted.pages[(VMS, "2")] = {"value": [_vm("vm-a", **ours), _vm("vm-b", job="a")]}
    scripted.pages[(NICS, "")] = {"value": ["nic", _nic("vm-a-nic", "10.0.0.7")]}
    (listed,) = await listing_set.instances({"job": "a"})
    assert (listed.id, listed.address, listed.provider_type) == (
        "vm-a",
        "10.0.0.7",
        "Standard_D2s_v5",
    )
    assert listed.tags == {"job": "a"}
    # Every page went through the client's pipeline, token and all.
    assert all(token for *_, token in scripted.requests)
