"""The conformance kit, SSH steps included, against the Azure driver on the
fake ARM server: each VM the driver creates runs on an in-process host
(:class:`cloudvm.testing.HostedDriver`) that runs its base64 ``customData``
once at boot and answers the metadata address with Azure IMDS, serving the
VM as ARM holds it."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cloudvm_azure
from azure_fake_arm import VM, FakeARM
from azure_imds import AzureIMDS
from azure_support import FakeCredential, make_config
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

import cloudvm
from cloudvm import Instance
from cloudvm.testing import HostBoot, HostedDriver
from cloudvm.testing.conformance import local_test_config, run_conformance

if TYPE_CHECKING:
    import prometheus_client


def azure_hosted(arm: FakeARM, credential: FakeCredential) -> HostedDriver:
    """The Azure driver (with a test credential) and a host behind every VM
    it creates."""

    async def new_set(
        config: Mapping[str, Any] | str | bytes,
        id: cloudvm.InstanceSetID,
        tags: cloudvm.SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> cloudvm.InstanceSet:
        return await cloudvm_azure.open_instance_set(
            config, id, tags, logger, registry, credential=credential
        )

    async def boot(instance: Instance) -> HostBoot:
        vm = arm.get(VM, instance.id)
        assert vm is not None, f"ARM has no VM {instance.id}"
        custom_data = vm["properties"]["osProfile"].get("customData") or ""
        return HostBoot(
            init_script=base64.b64decode(custom_data),
            metadata=AzureIMDS(lambda: arm.get(VM, instance.id)),
        )

    return HostedDriver(cloudvm.driver_func(new_set), boot)


async def test_conformance_kit_passes(arm: FakeARM, credential: FakeCredential) -> None:
    async with azure_hosted(arm, credential) as driver:
        report = await run_conformance(
            local_test_config(driver, IMAGE, SMALL, config=make_config(arm))
        )
    assert report.ok, str(report)
    # It really was ARM underneath, and nothing is left there.
    assert arm.calls("PUT", "/virtualMachines/") and arm.calls("DELETE", "/virtualMachines/")
    assert_nothing_left(arm)
