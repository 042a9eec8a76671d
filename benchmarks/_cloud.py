"""Case 3: what the EC2 driver adds over raw aiobotocore calls, on moto."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import _ec2_listing
from _stats import CaseResult, Row, interleaved

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceSet, InstanceSetID, InstanceType
from cloudvm.driverkit import SET_ID_TAG

__all__ = ["run"]

NAME = "cloud"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SET_ID = "bench"
ITYPE = InstanceType(
    name="m5.large",
    provider_type="m5.large",
    vcpus=2,
    ram=8 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.096,
)


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    """moto's server in a child process on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MOTO_EC2_LOAD_DEFAULT_AMIS="false")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _reset(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[Any]:
    # Imported by name: aiobotocore ships no type information.
    config = importlib.import_module("aiobotocore.config").AioConfig(
        retries={"total_max_attempts": 1}
    )
    session = importlib.import_module("aiobotocore.session").get_session()
    async with session.create_client(
        "ec2", region_name=REGION, endpoint_url=url, config=config, **CREDENTIALS
    ) as client:
        yield client


async def _world(ec2: Any) -> dict[str, str]:
    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
    subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20"))["Subnet"]["SubnetId"]
    group = await ec2.create_security_group(GroupName="bench", Description="bench", VpcId=vpc)
    image = (await ec2.register_image(Name="bench-image"))["ImageId"]
    return {"subnet": subnet, "group": group["GroupId"], "image": image}


def _run_params(world: dict[str, str], count: int) -> dict[str, Any]:
    return {
        "ImageId": world["image"],
        "InstanceType": ITYPE.provider_type,
        "MinCount": count,
        "MaxCount": count,
        "SubnetId": world["subnet"],
        "SecurityGroupIds": [world["group"]],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": SET_ID_TAG, "Value": SET_ID}]}
        ],
    }


async def _driver_set(driver: cloudvm.Driver, url: str, world: dict[str, str]) -> InstanceSet:
    config = {
        "region": REGION,
        "endpoint_url": url,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "subnet_ids": [world["subnet"]],
        "security_group_ids": [world["group"]],
        "admin_username": "admin",
    }
    return await driver.instance_set(
        config, InstanceSetID(SET_ID), {}, logging.getLogger("bench.ec2"), None
    )


def _per_call(
    action: Callable[[], Awaitable[object]], count: int
) -> Callable[[], Awaitable[float]]:
    async def probe() -> float:
        start = time.perf_counter()
        for _ in range(count):
            await action()
        return (time.perf_counter() - start) / count * 1000

    return probe


async def _listings(
    result: CaseResult,
    url: str,
    size: int,
    listings: int,
    repeats: int,
    drivers: Mapping[str, cloudvm.Driver] | None = None,
) -> None:
    """``instances()`` (of each of ``drivers``, by variant name; the installed
    EC2 driver by default) vs a raw paginator over ``size`` instances of the set."""
    if drivers is None:
        drivers = {"cloudvm instances()": cloudvm.load_driver("ec2")}
    _reset(url)
    async with _client(url) as ec2:
        world = await _world(ec2)
        await ec2.run_instances(**_run_params(world, size))
        sets = {name: await _driver_set(driver, url, world) for name, driver in drivers.items()}
        try:
            await _ec2_listing.listing_rows(
                result, sets, ec2, set_id=SET_ID, size=size, listings=listings, repeats=repeats
            )
        finally:
            for instance_set in sets.values():
                await instance_set.stop()


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "EC2 driver vs raw aiobotocore on moto")
    if "ec2" not in cloudvm.available_drivers():
        result.skipped = "skipped: EC2 driver not installed"
        return result
    sizes = [5, 10] if quick else [100, 1000]
    creates = 3 if quick else 50
    repeats = 1 if quick else 3
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ[name] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    logging.getLogger("bench.ec2").setLevel(logging.WARNING)
    with _moto() as url:
        for size in sizes:
            # Listings per sample: about 2000 instances' worth.
            listings = 2 if quick else max(2, min(5, 2000 // size))
            await _listings(result, url, size, listings, repeats)
        _reset(url)
        async with _client(url) as ec2:
            world = await _world(ec2)
            instance_set = await _driver_set(cloudvm.load_driver("ec2"), url, world)
            try:

                async def create() -> None:
                    await instance_set.create(
                        ITYPE, ImageID(world["image"]), {}, InitCommand(""), None
                    )

                async def raw_create() -> None:
                    await ec2.run_instances(**_run_params(world, 1))

                samples = await interleaved(
                    {
                        "cloudvm create": _per_call(create, creates),
                        "aiobotocore run_instances": _per_call(raw_create, creates),
                    },
                    repeats=repeats,
                )
            finally:
                await instance_set.stop()
        for variant, values in samples.items():
            baseline = ("aiobotocore run_instances",) if variant.startswith("cloudvm") else None
            result.rows.append(
                Row(NAME, variant, "ms per create", values, n=creates, ratio_to=baseline)
            )
    result.notes.append(
        f"moto server in a child process; listings of {sizes} instances (client CPU is "
        "this process's alone; bytes kept per instance traced with tracemalloc); "
        f"{creates} sequential creates per sample"
    )
    return result
