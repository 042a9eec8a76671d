"""Quotas per quota group and capacity shortages with the right flags."""

from __future__ import annotations

import pytest

from cloudvm import CapacityError, QuotaError

from ._util import LARGE, SET_A, SET_B, SMALL, SPOT, create, manual_cloud


async def test_instance_quota_counts_every_set_in_the_group() -> None:
    cloud, _ = manual_cloud(quotas={"standard": {"instances": 2}})
    set_a = await cloud.instance_set(SET_A)
    set_b = await cloud.instance_set(SET_B)
    first = await create(set_a)
    await create(set_b)
    with pytest.raises(QuotaError) as caught:
        await create(set_a)
    assert caught.value.code == "InstanceLimitExceeded"
    await create(set_a, SPOT)  # another quota group, unlimited
    await first.destroy()
    await create(set_a)  # a destroy frees quota at once


async def test_vcpu_quota() -> None:
    cloud, _ = manual_cloud(default_quota={"vcpus": 6})
    instance_set = await cloud.instance_set(SET_A)
    await create(instance_set, LARGE)  # 4 vCPUs
    with pytest.raises(QuotaError) as caught:
        await create(instance_set, LARGE)
    assert caught.value.code == "VcpuLimitExceeded"
    await create(instance_set, SMALL)  # 2 more fit exactly
    with pytest.raises(QuotaError):
        await create(instance_set, SMALL)
    assert [call.outcome for call in cloud.calls] == [
        "ok",
        "QuotaError",
        "ok",
        "QuotaError",
    ]


async def test_capacity_shortage_of_one_type_is_type_specific() -> None:
    cloud, _ = manual_cloud(capacity_shortage={"instance_types": ["m5.xlarge"]})
    instance_set = await cloud.instance_set(SET_A)
    with pytest.raises(CapacityError) as caught:
        await create(instance_set, LARGE)
    assert caught.value.instance_type_specific
    assert not caught.value.quota_group_specific
    await create(instance_set, SMALL)
    assert len(cloud.instance_ids()) == 1


async def test_capacity_shortage_of_a_quota_group_is_group_specific() -> None:
    cloud, _ = manual_cloud(capacity_shortage={"quota_groups": ["standard-spot"]})
    instance_set = await cloud.instance_set(SET_A)
    with pytest.raises(CapacityError) as caught:
        await create(instance_set, SPOT)
    assert caught.value.quota_group_specific
    assert not caught.value.instance_type_specific
    await create(instance_set, SMALL)


async def test_capacity_shortage_everywhere_has_neither_flag_and_can_end() -> None:
    cloud, _ = manual_cloud(capacity_shortage={"everywhere": True})
    instance_set = await cloud.instance_set(SET_A)
    for itype in (SMALL, LARGE, SPOT):
        with pytest.raises(CapacityError) as caught:
            await create(instance_set, itype)
        assert not caught.value.instance_type_specific
        assert not caught.value.quota_group_specific
    cloud.configure(capacity_shortage={})
    await create(instance_set, LARGE)
