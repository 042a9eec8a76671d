"""Conformance settings for a driver tested against local stand-ins."""

from __future__ import annotations

from typing import Any

import asyncssh

from .._protocols import Driver
from .._types import ImageID, InstanceType
from ._conformance_report import ConformanceConfig

__all__ = ["local_test_config"]

# A local stand-in answers in milliseconds; these bound a loaded test machine,
# not a cloud (ConformanceConfig's own defaults are for real clouds).
_LOCAL_SETTINGS: dict[str, Any] = {
    "boot_timeout": 30.0,
    "destroy_timeout": 30.0,
    "settle_timeout": 10.0,
    "poll_interval": 0.05,
    "ssh_connect_timeout": 10.0,
    # Set, so that no step is skipped and shared tags are exercised.
    "extra_command": "uname -s",
    "shared_tags": {"cluster": "conformance"},
}


def local_test_config(
    driver: str | Driver, image_id: ImageID, instance_type: InstanceType, **overrides: Any
) -> ConformanceConfig:
    """A :class:`ConformanceConfig` for a driver tested against a local
    stand-in for its cloud (moto, a local REST fake, :class:`HostedDriver`
    hosts), where the real-cloud defaults would make a failing run wait minutes.

    Beside ``driver``, ``image_id`` and ``instance_type``, it sets
    ``boot_timeout=30``, ``destroy_timeout=30``, ``settle_timeout=10``,
    ``poll_interval=0.05``, ``ssh_connect_timeout=10`` (seconds),
    ``extra_command="uname -s"``, ``shared_tags={"cluster": "conformance"}``
    and, unless one is given, a fresh ed25519 ``ssh_key``; every other field
    keeps ConformanceConfig's default. ``overrides`` are any of
    ConformanceConfig's fields (``config=`` included) and win over all of
    these. Returns a new config each call (with a new key unless one is
    given); raises TypeError for a name that is not a field and ValueError
    for a value ConformanceConfig refuses, as ConformanceConfig itself does.
    """
    settings = {**_LOCAL_SETTINGS, **overrides}
    if "shared_tags" not in overrides:  # no two configs share the default's dict
        settings["shared_tags"] = dict(_LOCAL_SETTINGS["shared_tags"])
    if "ssh_key" not in settings:
        settings["ssh_key"] = asyncssh.generate_private_key("ssh-ed25519")
    return ConformanceConfig(
        driver=driver, image_id=image_id, instance_type=instance_type, **settings
    )
