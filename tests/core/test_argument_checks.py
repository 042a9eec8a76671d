"""driverkit.check_create_arguments and driverkit.check_set_arguments: the
checks every driver runs before its first cloud call, each error naming the
argument."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncssh
import pydantic
import pytest

import cloudvm
import cloudvm.driverkit
from cloudvm.driverkit import (
    CreateArguments,
    SetArguments,
    check_create_arguments,
    check_set_arguments,
    config_driver,
)
from cloudvm.testing import FakeCloud

ITYPE = cloudvm.InstanceType(
    name="small", provider_type="s1", vcpus=1, ram=1 << 30, scratch=0, included_scratch=0,
    added_scratch=0, price=0.01, preemptible=False,
)  # fmt: skip
KEY = asyncssh.generate_private_key("ssh-ed25519")
GOOD: dict[str, Any] = {
    "itype": ITYPE, "image_id": "img-1", "tags": {"job": "7"}, "init_command": "true",
    "public_key": KEY,
}  # fmt: skip


def test_good_arguments_come_back_checked_and_the_tags_copied() -> None:
    tags = {"job": "7"}
    args = check_create_arguments(**{**GOOD, "tags": tags})
    assert args == CreateArguments(
        ITYPE, cloudvm.ImageID("img-1"), {"job": "7"}, cloudvm.InitCommand("true"), KEY
    )
    tags["job"] = "8"
    assert args.tags == {"job": "7"}  # a copy: later changes to the caller's dict do not leak in
    assert check_create_arguments(**{**GOOD, "public_key": None}).public_key is None


@pytest.mark.parametrize(
    ("argument", "value", "error", "message"),
    [
        ("itype", "small", TypeError, "itype must be an InstanceType, not str"),
        ("image_id", 7, TypeError, "image_id must be a string, not int"),
        ("tags", [("a", "b")], TypeError, "tags must be a mapping"),
        ("tags", {"cloudvm-secret": "x"}, ValueError, "tags: "),
        ("tags", {"a": "b\x1b[2J"}, ValueError, "tags['a'] must be at most 256"),
        ("init_command", b"true", TypeError, "init_command must be a string, not bytes"),
        ("init_command", "x" * 2000, ValueError, "init_command is 2000 bytes"),
        ("public_key", "ssh-ed25519 AAAA", TypeError, "public_key must be an asyncssh.SSHKey"),
    ],
)
def test_each_bad_argument_is_refused_naming_it(
    argument: str, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        check_create_arguments(**{**GOOD, argument: value})


def test_an_empty_image_id_is_refused_only_when_the_cloud_says_what_an_image_is() -> None:
    assert check_create_arguments(**{**GOOD, "image_id": ""}).image_id == ""
    with pytest.raises(ValueError, match=r"image_id must be a non-empty string \(an AMI id\)"):
        check_create_arguments(**{**GOOD, "image_id": ""}, image_id_is="an AMI id")


def test_the_first_bad_argument_in_parameter_order_is_named() -> None:
    with pytest.raises(TypeError, match=r"^itype"):
        check_create_arguments(None, None, None, None, "not a key")


class _Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    region: str


def test_set_arguments_parse_the_config_and_copy_the_tags() -> None:
    tags = {"cluster": "a"}
    config, set_id, shared = check_set_arguments(
        _Config, {"region": "r1"}, "set-1", tags, driver="mine"
    )
    assert (config, set_id, shared) == (_Config(region="r1"), "set-1", {"cluster": "a"})
    assert shared is not tags


def test_set_arguments_name_what_is_wrong() -> None:
    with pytest.raises(
        cloudvm.ConfigError, match=r"invalid mine config: .*regoin: .*did you mean 'region'"
    ):
        check_set_arguments(_Config, {"regoin": "r1"}, "set-1", {}, driver="mine")
    for bad_id in ("", 7, None):
        with pytest.raises(ValueError, match=r"the InstanceSetID must be a non-empty string$"):
            check_set_arguments(_Config, {"region": "r1"}, bad_id, {}, driver="mine")
    with pytest.raises(ValueError, match="of at most 8 characters"):
        check_set_arguments(_Config, {"region": "r1"}, "x" * 9, {}, driver="mine", max_id_chars=8)
    with pytest.raises(ValueError, match=r"^shared resource tags: "):
        check_set_arguments(_Config, {"region": "r1"}, "s", {"": "x"}, driver="mine")


def test_set_arguments_run_the_drivers_own_tag_check() -> None:
    def at_most_one(tags: object, *, field: str) -> dict[str, str]:
        checked = cloudvm.driverkit.validate_tags(tags, field=field)
        if len(checked) > 1:
            raise ValueError(f"{field}: this cloud takes one tag")
        return checked

    with pytest.raises(ValueError, match=r"^shared resource tags: this cloud takes one tag"):
        check_set_arguments(
            _Config, {"region": "r1"}, "s", {"a": "1", "b": "2"}, driver="mine",
            check_tags=at_most_one,
        )  # fmt: skip


async def test_config_driver_opens_a_set_only_with_checked_arguments() -> None:
    opened: list[SetArguments[_Config]] = []
    cloud = FakeCloud()

    async def open_set(args: SetArguments[_Config]) -> cloudvm.InstanceSet:
        opened.append(args)
        return await cloud.instance_set(args.id)

    driver = config_driver(_Config, open_set, name="mine", max_id_chars=8)
    logger = logging.getLogger("mine")
    with pytest.raises(cloudvm.ConfigError, match="invalid mine config"):
        await driver.instance_set({}, cloudvm.InstanceSetID("s"), {}, logger)
    with pytest.raises(ValueError, match="of at most 8 characters"):
        await driver.instance_set({"region": "r"}, cloudvm.InstanceSetID("x" * 9), {}, logger)
    with pytest.raises(ValueError, match=r"^shared resource tags"):
        await driver.instance_set({"region": "r"}, cloudvm.InstanceSetID("s"), {"": "x"}, logger)
    assert opened == []  # nothing reached the cloud's side
    tags = {"team": "ci"}
    async with await driver.instance_set(
        b'{"region": "r"}', cloudvm.InstanceSetID("s"), tags, logger
    ):
        pass
    await cloud.close()
    (args,) = opened
    assert (args.config, args.id, args.tags, args.logger, args.registry) == (
        _Config(region="r"), "s", {"team": "ci"}, logger, None,
    )  # fmt: skip
    assert args.tags is not tags
