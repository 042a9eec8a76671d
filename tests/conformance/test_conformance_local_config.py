"""local_test_config: the conformance settings for a driver tested against
local stand-ins, every one of them overridable."""

from __future__ import annotations

import dataclasses

import asyncssh
import pytest

import cloudvm
from cloudvm.testing.conformance import ConformanceConfig, local_test_config

from .conftest import FAKE_SMALL

IMAGE = cloudvm.ImageID("ami-local")


def test_it_sets_quick_timeouts_a_fresh_key_and_what_makes_every_step_run() -> None:
    config = local_test_config("fake", IMAGE, FAKE_SMALL, config={"ssh": True})
    assert (config.driver, config.image_id, config.instance_type) == ("fake", IMAGE, FAKE_SMALL)
    assert config.config == {"ssh": True}
    timeouts = (
        config.boot_timeout,
        config.destroy_timeout,
        config.settle_timeout,
        config.poll_interval,
        config.ssh_connect_timeout,
    )
    assert timeouts == (30, 30, 10, 0.05, 10)
    assert config.extra_command == "uname -s"
    assert config.shared_tags == {"cluster": "conformance"}
    assert config.ssh_key.algorithm == b"ssh-ed25519"
    assert config.ssh_key.export_private_key()  # a private key: the kit logs in with it


def test_the_fields_it_does_not_set_keep_the_kits_defaults() -> None:
    ours = local_test_config("fake", IMAGE, FAKE_SMALL)
    plain = ConformanceConfig("fake", IMAGE, FAKE_SMALL, ours.ssh_key)
    set_here = {
        "boot_timeout", "destroy_timeout", "settle_timeout", "poll_interval",
        "ssh_connect_timeout", "extra_command", "shared_tags",
    }  # fmt: skip
    for field in dataclasses.fields(ConformanceConfig):
        if field.name not in set_here:
            assert getattr(ours, field.name) == getattr(plain, field.name), field.name


def test_overrides_win_over_every_setting() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    config = local_test_config(
        "fake",
        IMAGE,
        FAKE_SMALL,
        ssh_key=key,
        poll_interval=0.5,
        extra_command=None,
        shared_tags={},
        cancel_delays=(0.0,),
    )
    assert config.ssh_key is key
    assert (config.poll_interval, config.extra_command, config.shared_tags) == (0.5, None, {})
    assert config.cancel_delays == (0.0,)
    assert config.boot_timeout == 30  # what was not overridden stays


def test_each_config_is_its_own() -> None:
    one, two = (local_test_config("fake", IMAGE, FAKE_SMALL) for _ in range(2))
    assert one.ssh_key.public_data != two.ssh_key.public_data
    one.shared_tags["cluster"] = "changed"
    assert two.shared_tags == {"cluster": "conformance"}
    assert local_test_config("fake", IMAGE, FAKE_SMALL).shared_tags == {"cluster": "conformance"}


def test_bad_overrides_are_refused_as_conformance_config_refuses_them() -> None:
    with pytest.raises(TypeError, match="boot_timout"):
        local_test_config("fake", IMAGE, FAKE_SMALL, boot_timout=5)
    with pytest.raises(ValueError, match="poll_interval"):
        local_test_config("fake", IMAGE, FAKE_SMALL, poll_interval=0)
