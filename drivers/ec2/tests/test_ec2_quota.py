"""Quota groups: the type-prefix table, spot suffix, overrides."""

from __future__ import annotations

import pytest
from cloudvm_ec2 import quota_group
from ec2_support import MakeSet, itype


@pytest.mark.parametrize(
    ("provider_type", "group"),
    [
        ("m5.large", "standard"),
        ("c7gn.xlarge", "standard"),
        ("t3a.micro", "standard"),
        ("r6i.2xlarge", "standard"),
        ("z1d.large", "standard"),
        ("a1.medium", "standard"),
        ("d3en.xlarge", "standard"),
        ("h1.2xlarge", "standard"),
        ("i4i.large", "standard"),
        ("g5.xlarge", "g"),
        ("vt1.3xlarge", "g"),
        ("p4d.24xlarge", "p"),
        ("p5.48xlarge", "p5"),
        ("inf2.xlarge", "inf"),
        ("trn1.2xlarge", "trn"),
        ("dl1.24xlarge", "dl"),
        ("x2idn.16xlarge", "x"),
        ("u-6tb1.metal", "u"),
        ("f1.2xlarge", "f"),
        ("hpc6a.48xlarge", "hpc"),
        ("mac2.metal", "mac"),
        ("M5.LARGE", "standard"),
        ("q9.large", "q"),  # unknown family: its own group
        ("", "unknown"),
    ],
)
def test_quota_group_table(provider_type: str, group: str) -> None:
    assert quota_group(provider_type, False) == group
    assert quota_group(provider_type, True) == f"{group}-spot"


async def test_instance_set_uses_the_table_and_config_overrides(make_set: MakeSet) -> None:
    instance_set = await make_set(quota_groups={"g5": "g5-special", "q": "standard"})
    assert instance_set.instance_quota_group(itype("m5.large")) == "standard"
    assert instance_set.instance_quota_group(itype("m5.large", preemptible=True)) == "standard-spot"
    assert instance_set.instance_quota_group(itype("g5.xlarge")) == "g5-special"
    assert instance_set.instance_quota_group(itype("g4dn.xlarge")) == "g"
    assert instance_set.instance_quota_group(itype("q9.large")) == "standard"
