"""Config validation, and bad input refused before any cloud call."""

from __future__ import annotations

import logging
from typing import Any

import asyncssh
import pytest
from cloudvm_ec2 import EC2Config
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, ec2_config, itype

import cloudvm
from cloudvm.driverkit import parse_config

MINIMAL = {"region": "eu-west-1", "admin_username": "admin"}


def parse(config: Any) -> EC2Config:
    return parse_config(EC2Config, config, driver="ec2")


def test_minimal_config_and_defaults() -> None:
    config = parse(MINIMAL)
    assert config.subnet_ids == [] and config.security_group_ids == []
    assert config.endpoint_url is None and config.access_key_id is None
    assert (config.ebs_volume_type, config.address, config.secret_storage) == (
        "gp3",
        "private",
        "tag",
    )
    assert config.spot_price_update_interval == 86400
    assert parse('{"region": "eu-west-1", "admin_username": "admin"}') == config


def test_one_subnet_may_be_a_string() -> None:
    assert parse({**MINIMAL, "subnet_ids": "subnet-0abc"}).subnet_ids == ["subnet-0abc"]
    assert parse({**MINIMAL, "security_group_ids": "sg-1"}).security_group_ids == ["sg-1"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"regoin": "x"}, "regoin"),
        ({"region": ""}, "region"),
        ({"subnet_ids": ["vpc-1"]}, "subnet_ids"),
        ({"subnet_ids": ["subnet-1", "subnet-1"]}, "subnet_ids"),
        ({"security_group_ids": ["default"]}, "security_group_ids"),
        ({"admin_username": ""}, "admin_username"),
        ({"ebs_volume_type": "gp9"}, "ebs_volume_type"),
        ({"page_size": 2}, "page_size"),
        ({"address": "elastic"}, "address"),
        ({"secret_storage": "file"}, "secret_storage"),
        ({"spot_price_update_interval": 0}, "spot_price_update_interval"),
        ({"quota_groups": {"G5": "x"}}, "quota_groups"),
        ({"endpoint_url": "not a url"}, "endpoint_url"),
        ({"access_key_id": "AKIA"}, "give both"),
        ({"session_token": "t"}, "session_token needs"),
    ],
)
def test_bad_config_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(cloudvm.ConfigError, match=field):
        parse({**MINIMAL, **changes})


def test_admin_username_is_required() -> None:
    with pytest.raises(cloudvm.ConfigError, match="admin_username"):
        parse({"region": "eu-west-1"})


def test_config_errors_never_repeat_secrets() -> None:
    with pytest.raises(cloudvm.ConfigError) as caught:
        parse({**MINIMAL, "secret_access_key": "hunter2-very-secret", "access_key_id": 5})
    assert "hunter2" not in str(caught.value)
    config = parse({**MINIMAL, "access_key_id": "AKIA", "secret_access_key": "hunter2"})
    assert "hunter2" not in repr(config)


async def test_driver_refuses_bad_config_and_ids_before_any_call() -> None:
    driver = cloudvm.load_driver("ec2")
    logger = logging.getLogger("t")
    with pytest.raises(cloudvm.ConfigError, match="region"):
        await driver.instance_set({"admin_username": "a"}, cloudvm.InstanceSetID("s"), {}, logger)
    with pytest.raises(ValueError, match="InstanceSetID"):
        await driver.instance_set(MINIMAL, cloudvm.InstanceSetID(""), {}, logger)
    with pytest.raises(ValueError, match="aws:"):
        await driver.instance_set(MINIMAL, cloudvm.InstanceSetID("s"), {"aws:x": "1"}, logger)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ({"": "x"}, "non-empty"),
        ({"cloudvm-secret": "x"}, "cloudvm-"),
        ({"aws:cloudformation": "x"}, "aws:"),
        ({"a/b": "x"}, "metadata service"),  # not readable through IMDS
        ({"with space": "x"}, "metadata service"),
        ({"_index": "x"}, "metadata service"),
        ({f"k{n}": "v" for n in range(49)}, "50 tags"),
        ({"k": "x" * 257}, "256"),
    ],
)
async def test_bad_tags_are_refused_before_any_call(
    tags: dict[str, str], match: str, make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    with pytest.raises(ValueError, match=match):
        await instance_set.create(
            itype(), cloudvm.ImageID(world.image_id), tags, cloudvm.InitCommand(""), None
        )
    assert proxy.actions() == []


async def test_other_bad_input_is_refused_before_any_call(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    image = cloudvm.ImageID(world.image_id)
    no_init = cloudvm.InitCommand("")
    with pytest.raises(ValueError, match="1 KiB"):
        await instance_set.create(itype(), image, {}, cloudvm.InitCommand("x" * 1024), None)
    with pytest.raises(ValueError, match="image_id"):
        await instance_set.create(itype(), cloudvm.ImageID(""), {}, no_init, None)
    with pytest.raises(TypeError, match="InstanceType"):
        await instance_set.create("m5.large", image, {}, no_init, None)  # type: ignore[arg-type]
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    with pytest.raises(ValueError, match="RSA or Ed25519"):
        await instance_set.create(itype(), image, {}, no_init, ecdsa)
    with pytest.raises(ValueError, match="cloudvm-"):
        await instance_set.instances({"cloudvm-instance-set": "other"})
    assert proxy.actions() == []


async def test_user_data_mode_allows_any_tag_key(make_set: MakeSet, world: World) -> None:
    instance_set = await make_set(secret_storage="user-data")
    created = await instance_set.create(
        itype(),
        cloudvm.ImageID(world.image_id),
        {"team/name": "a b"},
        cloudvm.InitCommand(""),
        None,
    )
    assert created.tags == {"team/name": "a b"}


def test_ec2_config_helper_is_valid(world: World) -> None:
    parse(ec2_config(world))


@pytest.mark.parametrize(
    "url",
    [
        "http://ec2.example.com",
        "http://10.0.0.5:5000",
        "http://[fe80::1]:5000",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://user:hunter2@vpce.example.com",
    ],
)
async def test_plain_http_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(cloudvm.ConfigError, match="endpoint_url") as caught:
        parse({**MINIMAL, "endpoint_url": url})
    assert "allow_insecure_transport" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    driver = cloudvm.load_driver("ec2")
    with pytest.raises(cloudvm.ConfigError, match="endpoint_url"):
        await driver.instance_set(
            {**MINIMAL, "endpoint_url": url}, cloudvm.InstanceSetID("s"), {}, logging.getLogger("t")
        )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000",
        "http://127.8.9.10",
        "http://[::1]:5000",
        "http://localhost:4566",
        "http://LOCALHOST",
        "https://ec2.example.com",
        "https://10.0.0.5",
    ],
)
def test_https_or_loopback_endpoints_are_accepted(url: str) -> None:
    assert parse({**MINIMAL, "endpoint_url": url}).endpoint_url is not None


def test_plain_http_elsewhere_needs_the_explicit_flag() -> None:
    config = parse(
        {**MINIMAL, "endpoint_url": "http://ec2.example.com", "allow_insecure_transport": True}
    )
    assert config.allow_insecure_transport
    assert parse(MINIMAL).allow_insecure_transport is False
