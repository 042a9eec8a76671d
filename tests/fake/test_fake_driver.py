"""The fake driver as a driver: entry point, config, sets sharing a cloud."""

from __future__ import annotations

import json
import re

import pytest

import cloudvm
import cloudvm.testing
from cloudvm import ConfigError, InitCommand, InstanceSetID
from cloudvm.testing import FAKE_DRIVER, FakeCloud, FakeConfig, FakeInstanceSet

from ._util import (
    IMAGE,
    LARGE,
    LOG,
    NO_INIT,
    SET_A,
    SET_B,
    SMALL,
    SPOT,
    create,
    ids,
    manual_cloud,
)


def test_load_driver_finds_the_fake() -> None:
    assert "fake" in cloudvm.available_drivers()
    assert cloudvm.load_driver("fake") is FAKE_DRIVER
    assert isinstance(FAKE_DRIVER, cloudvm.Driver)


def test_fake_names_say_cloudvm_testing() -> None:
    # tests/core/test_contract.py checks cloudvm.testing.__all__ itself.
    assert cloudvm.testing.FakeCloud.__module__ == "cloudvm.testing"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"latenci": {}}, "latenci"),
        ({"rate_limits": {"create": {"burst": 0, "refill": 1}}}, "rate_limits.create.burst"),
        ({"rate_limits": {"create": {"burst": 5, "refill": 0}}}, "rate_limits.create.refill"),
        ({"failure_rates": {"create": 1.5}}, "failure_rates.create"),
        ({"lost_responses": {"reboot": 0.1}}, "lost_responses.reboot"),
        ({"quotas": {"standard": {"vcpus": -1}}}, "quotas.standard.vcpus"),
        ({"boot_delay": "soon"}, "boot_delay"),
        ({"capacity_shortage": {"everywhere": "maybe"}}, "capacity_shortage.everywhere"),
        ('{"listing_delay": -1}', "listing_delay"),
    ],
)
async def test_config_errors_name_the_field(config: object, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid fake config: {field}:")):
        await FAKE_DRIVER.instance_set(config, SET_A, {}, LOG)  # type: ignore[arg-type]


def test_cloud_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="tag_delay"):
        FakeCloud({"tag_delay": -2})
    cloud = FakeCloud()
    with pytest.raises(ConfigError, match=r"latency\.create"):
        cloud.configure(latency={"create": -1})
    with pytest.raises(ConfigError, match="no_such_knob"):
        cloud.configure(no_such_knob=1)
    assert cloud.config == FakeConfig()


async def test_json_config_is_accepted() -> None:
    config = json.dumps({"cloud": "json", "rate_limits": None, "boot_delay": 0})
    instance_set = await FAKE_DRIVER.instance_set(config, SET_A, {"owner": "me"}, LOG)
    assert isinstance(instance_set, FakeInstanceSet)
    assert instance_set.cloud.config.rate_limits is None


async def test_bad_input_raises_before_any_call() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    with pytest.raises(ValueError, match="cloudvm-"):
        await instance_set.create(SMALL, IMAGE, {"cloudvm-secret": "x"}, NO_INIT, None)
    with pytest.raises(ValueError, match="init_command"):
        await instance_set.create(SMALL, IMAGE, {}, InitCommand("x" * 2000), None)
    with pytest.raises(TypeError, match="itype"):
        await instance_set.create("small", IMAGE, {}, NO_INIT, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tags"):
        await instance_set.instances({"": "x"})
    instance = await create(instance_set)
    cloud.clear_calls()
    with pytest.raises(ValueError, match="tags"):
        await instance.set_tags({"k": "\n"})
    assert cloud.calls == []
    with pytest.raises(ValueError, match="InstanceSetID"):
        await cloud.instance_set(InstanceSetID(""))


async def test_sets_with_other_ids_see_nothing_of_each_other() -> None:
    cloud, _ = manual_cloud()
    set_a = await cloud.instance_set(SET_A)
    set_b = await cloud.instance_set(SET_B)
    again_a = await cloud.instance_set(SET_A)
    a1 = await create(set_a, tags={"role": "worker"})
    b1 = await create(set_b, tags={"role": "worker"})
    assert ids(await set_a.instances()) == [a1.id]
    assert ids(await set_b.instances({"role": "worker"})) == [b1.id]
    assert ids(await again_a.instances({"role": "worker"})) == [a1.id]
    # An instance is listed with exactly the user's tags, never cloudvm's own.
    (listed,) = await again_a.instances()
    assert listed.tags == {"role": "worker"}


async def test_driver_sets_share_a_named_cloud() -> None:
    set_a = await FAKE_DRIVER.instance_set({"cloud": "shared", "rate_limits": None}, SET_A, {}, LOG)
    same = await FAKE_DRIVER.instance_set({"cloud": "shared"}, SET_A, {}, LOG)
    other_cloud = await FAKE_DRIVER.instance_set({"cloud": "elsewhere"}, SET_A, {}, LOG)
    assert isinstance(set_a, FakeInstanceSet)
    assert isinstance(same, FakeInstanceSet)
    assert set_a.cloud is same.cloud
    instance = await create(set_a)
    assert ids(await same.instances()) == [instance.id]
    assert await other_cloud.instances() == []


async def test_joining_a_named_cloud_with_other_knobs_is_refused() -> None:
    await FAKE_DRIVER.instance_set({"cloud": "knobs", "boot_delay": 1}, SET_A, {}, LOG)
    await FAKE_DRIVER.instance_set({"cloud": "knobs", "boot_delay": 1.0}, SET_B, {}, LOG)
    with pytest.raises(ConfigError, match="boot_delay, ssh"):
        await FAKE_DRIVER.instance_set(
            {"cloud": "knobs", "boot_delay": 2, "ssh": True}, SET_B, {}, LOG
        )


async def test_a_cloud_object_can_be_used_through_its_driver() -> None:
    async with FakeCloud({"rate_limits": None}) as cloud:
        instance_set = await cloud.driver.instance_set({}, SET_A, {}, LOG)
        instance = await create(instance_set)  # type: ignore[arg-type]
        assert cloud.instance_ids(SET_A) == [instance.id]
        with pytest.raises(ConfigError, match="seed"):
            await cloud.driver.instance_set({"seed": 4}, SET_A, {}, LOG)


async def test_registered_cloud_is_joined_by_name() -> None:
    cloud = FakeCloud({"cloud": "mine", "rate_limits": None}, register=True)
    with pytest.raises(ValueError, match="already registered"):
        FakeCloud({"cloud": "mine"}, register=True)
    instance_set = await FAKE_DRIVER.instance_set({"cloud": "mine"}, SET_A, {}, LOG)
    assert isinstance(instance_set, FakeInstanceSet)
    assert instance_set.cloud is cloud


async def test_instance_quota_group_separates_spot_and_mapped_types() -> None:
    cloud, _ = manual_cloud(quota_groups={"m5.xlarge": "m"})
    instance_set = await cloud.instance_set(SET_A)
    assert instance_set.instance_quota_group(SMALL) == "standard"
    assert instance_set.instance_quota_group(SPOT) == "standard-spot"
    assert instance_set.instance_quota_group(LARGE) == "m"


async def test_stopped_set_reports_misuse() -> None:
    reported: list[str] = []
    cloud = FakeCloud({"rate_limits": None}, on_misuse=lambda m: reported.append(m.kind))
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set)
    await instance_set.stop()
    await instance_set.stop()  # twice is harmless
    with pytest.raises(RuntimeError, match="stopped"):
        await instance_set.instances()
    with pytest.raises(RuntimeError, match="stopped"):
        await instance.destroy()
    assert reported == ["use-after-stop", "use-after-stop"]
    assert [m.instance_id for m in cloud.misuses] == [None, instance.id]
    # The instance is a cloud resource: it outlives the set.
    assert cloud.instance_ids(SET_A) == [instance.id]


async def test_closed_cloud_refuses_calls() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    await cloud.close()
    await cloud.close()
    with pytest.raises(RuntimeError, match="closed"):
        await instance_set.instances()
    assert [m.kind for m in cloud.misuses] == ["use-after-close"]
    with pytest.raises(RuntimeError, match="closed"):
        await cloud.instance_set(SET_A)


async def test_set_tags_on_a_destroyed_instance_is_misuse_and_destroy_twice_is_not() -> None:
    cloud, _ = manual_cloud()
    instance_set = await cloud.instance_set(SET_A)
    instance = await create(instance_set)
    await instance.destroy()
    await instance.destroy()  # gone already: a no-op, as the contract says
    assert cloud.misuses == []
    with pytest.raises(cloudvm.CloudError) as caught:
        await instance.set_tags({"a": "b"})
    assert caught.value.code == "InvalidInstanceID.NotFound"
    assert [m.kind for m in cloud.misuses] == ["set-tags-gone"]
