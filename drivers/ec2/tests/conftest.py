"""Fixtures: moto's EC2 server on a free loopback port, the fault proxy in
front of it, a small VPC, and InstanceSets built through the real driver."""

from __future__ import annotations

import gc
import logging
import os
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from cloudvm_ec2 import EC2InstanceSet
from ec2_proxy import EC2FaultProxy
from ec2_support import REGION, MakeSet, World, boto_client, ec2_config
from moto.server import ThreadedMotoServer

import cloudvm


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's AWS credentials, profile or config never reach a test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's EC2 server (in a thread of this process) on 127.0.0.1, port 0."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as patch:
        # moto loads thousands of AMIs into every fresh backend (~2 s); the
        # tests register the one image they use.
        patch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@pytest.fixture
def moto(moto_url: str) -> str:
    """moto's URL, with its state emptied before the test."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass
    return moto_url


@pytest.fixture
def proxy(moto: str) -> Iterator[EC2FaultProxy]:
    with EC2FaultProxy(moto) as running:
        yield running


@pytest.fixture
def world(moto: str) -> World:
    ec2 = boto_client(moto)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"{REGION}{zone}"
        )["Subnet"]["SubnetId"]
        for n, zone in enumerate("abc", start=1)
    ]
    group = ec2.create_security_group(GroupName="cloudvm", Description="test", VpcId=vpc)
    image = ec2.register_image(Name="cloudvm-test-image")["ImageId"]
    return World(moto, vpc, subnets, group["GroupId"], image)


@pytest.fixture
async def make_set(world: World) -> AsyncIterator[MakeSet]:
    """Build InstanceSets through ``load_driver("ec2")``; each is stopped at
    the end of the test."""
    made: list[cloudvm.InstanceSet] = []

    async def make(
        *,
        endpoint: str | None = None,
        set_id: str = "test-set",
        shared_tags: dict[str, str] | None = None,
        registry: Any = None,
        **overrides: Any,
    ) -> EC2InstanceSet:
        driver = cloudvm.load_driver("ec2")
        instance_set = await driver.instance_set(
            ec2_config(world, endpoint, **overrides),
            cloudvm.InstanceSetID(set_id),
            shared_tags or {},
            logging.getLogger("test.ec2"),
            registry,
        )
        made.append(instance_set)
        assert isinstance(instance_set, EC2InstanceSet)
        return instance_set

    yield make
    for instance_set in made:
        await instance_set.stop()


@pytest.fixture
def no_unclosed_sessions() -> Iterator[None]:
    """Fail if anything the test dropped (an HTTP session, a connector)
    complains at garbage collection that it was never closed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    unclosed = [w for w in caught if "nclosed" in str(w.message)]
    assert not unclosed, [str(w.message) for w in unclosed]
