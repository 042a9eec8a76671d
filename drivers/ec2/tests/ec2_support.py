"""Helpers shared by the EC2 driver's tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import boto3  # type: ignore[import-untyped]
from cloudvm_ec2 import EC2InstanceSet

import cloudvm

REGION = "us-east-1"
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}

#: The ``make_set`` fixture: builds an InstanceSet through ``load_driver("ec2")``.
MakeSet = Callable[..., Awaitable[EC2InstanceSet]]


@functools.cache
def boto_client(url: str, service: str = "ec2") -> Any:
    """A plain boto3 client on moto, for setting the scene and for checking
    what the driver did, independently of the driver."""
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclasses.dataclass(frozen=True)
class World:
    """A VPC with three subnets in three zones, a security group and an AMI."""

    url: str
    vpc_id: str
    subnet_ids: list[str]
    security_group_id: str
    image_id: str

    @property
    def ec2(self) -> Any:
        return boto_client(self.url)


def ec2_config(world: World, endpoint: str | None = None, **overrides: Any) -> dict[str, Any]:
    return {
        "region": REGION,
        "endpoint_url": endpoint or world.url,
        **CREDENTIALS,
        "subnet_ids": world.subnet_ids[:1],
        "security_group_ids": [world.security_group_id],
        "admin_username": "admin",
        **overrides,
    }


def itype(
    provider_type: str = "m5.large",
    *,
    price: float = 0.096,
    preemptible: bool = False,
    added_scratch: int = 0,
) -> cloudvm.InstanceType:
    return cloudvm.InstanceType(
        name=provider_type,
        provider_type=provider_type,
        vcpus=2,
        ram=8 << 30,
        scratch=added_scratch,
        included_scratch=0,
        added_scratch=added_scratch,
        price=price,
        preemptible=preemptible,
    )


_T = TypeVar("_T")


async def eventually(probe: Callable[[], Awaitable[_T]], timeout: float = 10.0) -> _T:
    """Call ``probe`` until it returns something truthy (a cloud being polled,
    as the conformance steps do); TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = await probe()
            if result:
                return result
            await anyio.sleep(0.1)
