"""Case: the Azure driver's ``instances()`` vs the raw SDK, on the local ARM API.

The fake ARM server of the driver's tests (drivers/azure/tests/azure_fake_arm.py)
runs in a child process (``python benchmarks/_azure_listing.py serve COUNT``
prints its port), holding COUNT VMs of one set, each with its NIC, so that
the client CPU measured here is the client's alone. The raw side lists the
same pages with azure-mgmt-compute/network aio (``virtual_machines.list`` and
``network_interfaces.list``, concurrently) and keeps the SDK models; the
driver side calls ``instances()``, which reads the same pages as JSON through
the same clients' pipelines and builds no SDK model. Memory is what the
listing's result keeps alive (tracemalloc), per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _stats import CaseResult, Row, interleaved

import cloudvm
from cloudvm import InstanceSetID
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG

__all__ = ["run"]

NAME = "azure-listing"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000b1"
GROUP = "bench"
SET_ID = "bench"
PAGE_SIZE = 50  # the local ARM API's default page
_FAKE_ARM = Path(__file__).parents[1] / "drivers" / "azure" / "tests"


def _resources(count: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of ``count`` VMs and their NICs, shaped as the
    driver's create leaves them (the body ARM answers with)."""
    prefix = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers"
    created = "2025-01-01T00:00:00+00:00"
    for n in range(count):
        name = f"cloudvm-bench-{n:06x}"
        nic_id = f"{prefix}/Microsoft.Network/networkInterfaces/{name}-nic"
        vm_id = f"{prefix}/Microsoft.Compute/virtualMachines/{name}"
        own = {SET_ID_TAG: SET_ID, "cloudvm-created-at": created}
        yield (
            "Microsoft.Network/networkInterfaces",
            f"{name}-nic",
            {
                "location": "westeurope",
                "tags": {"owner": "bench", **own},
                "properties": {
                    "ipConfigurations": [
                        {
                            "name": "primary",
                            "id": f"{nic_id}/ipConfigurations/primary",
                            "properties": {
                                "subnet": {
                                    "id": f"{prefix}/Microsoft.Network/virtualNetworks/"
                                    "vnet1/subnets/default"
                                },
                                "privateIPAllocationMethod": "Dynamic",
                                "privateIPAddress": f"10.0.{n // 250}.{n % 250 + 4}",
                                "primary": True,
                                "provisioningState": "Succeeded",
                            },
                        }
                    ],
                    "macAddress": "00-0D-3A-00-00-00",
                    "virtualMachine": {"id": vm_id},
                    "provisioningState": "Succeeded",
                },
            },
        )
        disk = f"{prefix}/Microsoft.Compute/disks/{name}-os"
        yield (
            "Microsoft.Compute/virtualMachines",
            name,
            {
                "location": "westeurope",
                "tags": {"job": f"j{n}", **own, SECRET_TAG: f"{n:032x}"},
                "properties": {
                    "vmId": f"00000000-0000-0000-0000-{n:012x}",
                    "timeCreated": created,
                    "provisioningState": "Succeeded",
                    "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                    "storageProfile": {
                        "imageReference": {
                            "publisher": "Canonical",
                            "offer": "ubuntu-24_04-lts",
                            "sku": "server",
                            "version": "latest",
                        },
                        "osDisk": {
                            "name": f"{name}-os",
                            "osType": "Linux",
                            "createOption": "FromImage",
                            "deleteOption": "Delete",
                            "caching": "ReadWrite",
                            "diskSizeGB": 30,
                            "managedDisk": {"storageAccountType": "StandardSSD_LRS", "id": disk},
                        },
                        "dataDisks": [],
                    },
                    "osProfile": {
                        "computerName": name,
                        "adminUsername": "cloudvm",
                        "linuxConfiguration": {
                            "disablePasswordAuthentication": True,
                            "ssh": {
                                "publicKeys": [
                                    {
                                        "path": "/home/cloudvm/.ssh/authorized_keys",
                                        "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"
                                        + "x" * 43,
                                    }
                                ]
                            },
                            "provisionVMAgent": True,
                        },
                        "secrets": [],
                        "allowExtensionOperations": True,
                    },
                    "networkProfile": {
                        "networkInterfaces": [
                            {
                                "id": nic_id,
                                "properties": {"primary": True, "deleteOption": "Delete"},
                            }
                        ]
                    },
                },
            },
        )


async def _serve(count: int) -> None:
    """The child: the fake ARM API holding ``count`` instances, until stdin closes."""
    sys.path.insert(0, str(_FAKE_ARM))
    from azure_fake_arm import FakeARM

    async with FakeARM(page_size=PAGE_SIZE) as arm:
        for rtype, name, body in _resources(count):
            arm.add(SUBSCRIPTION, GROUP, rtype, name, body)
        print(json.dumps({"base_url": arm.base_url}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


@contextlib.contextmanager
def _server(count: int) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "serve", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the fake ARM server did not start")
        yield str(json.loads(line)["base_url"])
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


class _Credential:
    """The async ``get_token`` protocol with a fixed token (the local API checks none)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("bench-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass


def _config(base_url: str) -> dict[str, Any]:
    return {
        "subscription_id": SUBSCRIPTION,
        "resource_group": GROUP,
        "location": "westeurope",
        "network": "vnet1",
        "subnet": "default",
        "base_url": base_url,
        "connection_verify": False,
        "sweep_interval": None,
    }


@contextlib.asynccontextmanager
async def _raw_clients(base_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's clients with the options the driver gives them."""
    from azure.mgmt.compute.aio import ComputeManagementClient
    from azure.mgmt.network.aio import NetworkManagementClient

    options: dict[str, Any] = {
        "base_url": base_url,
        "credential_scopes": [f"{base_url}/.default"],
        "retry_total": 0,
        "logging_enable": False,
        "connection_verify": False,
    }
    credential: Any = _Credential()
    async with (
        ComputeManagementClient(credential, SUBSCRIPTION, **options) as compute,
        NetworkManagementClient(credential, SUBSCRIPTION, **options) as network,
    ):
        yield compute, network


def _cpu_per_call(
    action: Callable[[], Awaitable[object]], count: int
) -> Callable[[], Awaitable[float]]:
    """Client CPU (this process; the server is another) in ms per call."""

    async def probe() -> float:
        gc.collect()  # each variant starts from the same heap, not the other's garbage
        start = time.process_time()
        for _ in range(count):
            await action()
        return (time.process_time() - start) / count * 1000

    return probe


async def _kept_bytes(action: Callable[[], Awaitable[object]]) -> float:
    """Bytes that the result of ``action`` keeps alive.

    ``action`` runs once untraced first: buffers and caches that the other
    variant's listing left at another size would otherwise grow while traced
    and be charged to this result (~0.5 KiB per instance at 1000, to whichever
    variant ran second in a round)."""
    await action()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = await action()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return float(after - before)


async def _measure(
    base_url: str, size: int, listings: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    logger = logging.getLogger("bench.azure")
    import cloudvm_azure  # a credential of ours, never the default chain

    instance_set = await cloudvm_azure.open_instance_set(
        _config(base_url), InstanceSetID(SET_ID), {}, logger, credential=_Credential()
    )
    try:
        async with _raw_clients(base_url) as (compute, network):

            async def listing() -> list[Any]:
                found = await instance_set.instances()
                assert len(found) == size, (len(found), size)
                return found

            async def raw_listing() -> tuple[list[Any], list[Any]]:
                async def collect(pager: Any) -> list[Any]:
                    return [item async for item in pager]

                vms, nics = await asyncio.gather(
                    collect(compute.virtual_machines.list(GROUP)),
                    collect(network.network_interfaces.list(GROUP)),
                )
                assert len(vms) == size and len(nics) == size, (len(vms), len(nics), size)
                return vms, nics

            cpu = await interleaved(
                {
                    "cloudvm instances()": _cpu_per_call(listing, listings),
                    "azure-mgmt aio list": _cpu_per_call(raw_listing, listings),
                },
                repeats=repeats,
            )
            memory: dict[str, list[float]] = {"cloudvm instances()": [], "azure-mgmt aio list": []}
            for round_ in range(repeats):
                order = [("cloudvm instances()", listing), ("azure-mgmt aio list", raw_listing)]
                for variant, action in order if round_ % 2 == 0 else order[::-1]:
                    memory[variant].append(await _kept_bytes(action) / size / 1024)
    finally:
        await instance_set.stop()
    return {"cpu": cpu, "memory": memory}


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "Azure instances() vs raw azure-mgmt aio lists on the local ARM API")
    if "azure" not in cloudvm.available_drivers():
        result.skipped = "skipped: Azure driver not installed"
        return result
    sizes = [10] if quick else [100, 1000]
    repeats = 1 if quick else 11
    logging.getLogger("bench.azure").setLevel(logging.WARNING)
    raw = ("azure-mgmt aio list",)
    for size in sizes:
        listings = max(1, (200 if not quick else 10) // size)
        with _server(size) as base_url:
            samples = await _measure(base_url, size, listings, repeats)
        for variant, values in samples["cpu"].items():
            result.rows.append(
                Row(
                    NAME,
                    variant,
                    "client CPU ms per listing",
                    values,
                    n=size,
                    ratio_to=raw if variant.startswith("cloudvm") else None,
                )
            )
        for variant, values in samples["memory"].items():
            result.rows.append(
                Row(
                    NAME,
                    variant,
                    "KiB kept per instance",
                    values,
                    n=size,
                    ratio_to=raw if variant.startswith("cloudvm") else None,
                )
            )
    result.notes.append(
        f"fake ARM API (HTTPS, pages of {PAGE_SIZE}) in a child process, one VM and one NIC "
        f"per instance; sizes {sizes}; client CPU is this process's; memory is what the "
        "result keeps alive (tracemalloc), each variant run once untraced before it is "
        "traced (else what the other variant left behind grew on the second's account); "
        "the raw side keeps the SDK's VM and NIC models; instances() reads the same pages "
        "as JSON through the same clients' pipelines, without the SDK's models"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve(int(sys.argv[2])))
