"""The public surface of cloudvm_ec2 and its entry point."""

from __future__ import annotations

import importlib.metadata

import cloudvm_ec2

import cloudvm


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(cloudvm_ec2) if not name.startswith("_")}
    assert set(cloudvm_ec2.__all__) - {"__version__"} == public


def test_reexports_name_the_package() -> None:
    assert repr(cloudvm_ec2.EC2APIError) == "<class 'cloudvm_ec2.EC2APIError'>"
    assert issubclass(cloudvm_ec2.EC2APIError, cloudvm.CloudError)


def test_entry_point_names_the_driver() -> None:
    [entry] = [
        ep for ep in importlib.metadata.entry_points(group="cloudvm.drivers") if ep.name == "ec2"
    ]
    assert entry.value == "cloudvm_ec2:DRIVER"
    assert cloudvm.load_driver("ec2") is cloudvm_ec2.DRIVER
    assert isinstance(cloudvm_ec2.DRIVER, cloudvm.Driver)
    assert "ec2" in cloudvm.available_drivers()
