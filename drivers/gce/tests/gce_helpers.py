"""Shared values for the GCE driver's tests (conftest.py holds the fixtures)."""

from __future__ import annotations

from typing import Any

from gce_fake_api import FakeCompute

from cloudvm import ImageID, InstanceType

ZONES = ["us-central1-a", "us-central1-b"]
IMAGE = ImageID("projects/debian-cloud/global/images/family/debian-12")

ITYPE = InstanceType(
    name="small",
    provider_type="n2-standard-2",
    vcpus=2,
    ram=8 * 2**30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.1,
)


def gce_config(fake: FakeCompute, **overrides: Any) -> dict[str, Any]:
    """A config for a set on ``fake``, with ``overrides`` applied."""
    config: dict[str, Any] = {
        "project": fake.project,
        "zones": list(ZONES),
        "api_endpoint": fake.url,
        "credentials": "anonymous",
        "admin_username": "crunch",
        "operation_timeout": 30.0,
        "call_timeout": 10.0,
    }
    config.update(overrides)
    return config
