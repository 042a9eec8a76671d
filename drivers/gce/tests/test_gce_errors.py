"""Rate limit, quota and capacity errors, zone failover, lost responses."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from cloudvm_gce import DRIVER
from cloudvm_gce._errors import QuotaGroupError, classify, quota_region
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE, ZONES, gce_config

import cloudvm
from cloudvm import (
    CapacityError,
    CloudError,
    InitCommand,
    InstanceSetID,
    QuotaError,
    RateLimitError,
)

NOW = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("codes", "status", "expected"),
    [
        (["rateLimitExceeded"], 403, RateLimitError),
        (["userRateLimitExceeded"], 403, RateLimitError),
        (["RATE_LIMIT_EXCEEDED"], None, RateLimitError),
        (["RESOURCE_OPERATION_RATE_EXCEEDED"], None, RateLimitError),
        ([], 429, RateLimitError),
        (["quotaExceeded"], 403, QuotaError),
        (["QUOTA_EXCEEDED"], None, QuotaError),
        (["ZONE_RESOURCE_POOL_EXHAUSTED"], None, CapacityError),
        (["ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"], None, CapacityError),
        (["insufficientCapacity"], 503, CapacityError),
        (["invalid"], 400, type(None)),
        (["notFound"], 404, type(None)),
    ],
)
def test_classify_maps_real_gce_codes(
    codes: list[str], status: int | None, expected: type[object]
) -> None:
    assert type(classify(codes, "msg", http_status=status, now=NOW)) is expected


def test_rate_limit_without_retry_after_ends_at_the_next_minute() -> None:
    err = classify(["rateLimitExceeded"], "msg", http_status=403, now=NOW)
    assert isinstance(err, RateLimitError)
    assert err.earliest_retry == datetime(2024, 5, 1, 12, 31, tzinfo=UTC)


def test_rate_limit_honours_retry_after_seconds_and_dates() -> None:
    err = classify([], "m", http_status=429, headers={"Retry-After": "7"}, now=NOW)
    assert isinstance(err, RateLimitError)
    assert err.earliest_retry == NOW + timedelta(seconds=7)
    date = "Wed, 01 May 2024 12:40:00 GMT"
    err = classify([], "m", http_status=429, headers={"retry-after": date}, now=NOW)
    assert isinstance(err, RateLimitError)
    assert err.earliest_retry == datetime(2024, 5, 1, 12, 40, tzinfo=UTC)


def test_family_cpu_quota_is_also_a_quota_group_capacity_error() -> None:
    err = classify(["QUOTA_EXCEEDED"], "Quota 'N2_CPUS' exceeded. Limit: 24.0", now=NOW)
    assert isinstance(err, QuotaGroupError)
    assert isinstance(err, QuotaError)
    assert isinstance(err, CapacityError)
    assert err.quota_group_specific


async def test_429_on_insert_raises_rate_limit_with_retry_after(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail("insert", 429, "rateLimitExceeded", "Too many", headers={"Retry-After": "30"})
    before = datetime.now(UTC)
    with pytest.raises(RateLimitError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert before + timedelta(seconds=29) <= info.value.earliest_retry
    assert info.value.earliest_retry <= datetime.now(UTC) + timedelta(seconds=31)
    assert len(fake_gce.calls("insert")) == 1  # no hidden SDK retry
    assert fake_gce.instances == {}


async def test_403_rate_limit_on_list_raises_rate_limit(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail(
        "list", 403, "rateLimitExceeded", "Quota exceeded for 'Read requests'", domain="usageLimits"
    )
    with pytest.raises(RateLimitError) as info:
        await gce_set.instances()
    assert info.value.code == "rateLimitExceeded"
    assert info.value.earliest_retry > datetime.now(UTC)
    assert len(fake_gce.calls("list")) <= len(ZONES)


async def test_403_quota_exceeded_on_insert_raises_quota_error(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail("insert", 403, "quotaExceeded", "Quota 'INSTANCES' exceeded")
    with pytest.raises(QuotaError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert not isinstance(info.value, CapacityError)
    assert len(fake_gce.calls("insert")) == 1


async def test_quota_error_inside_a_finished_operation(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail_operation(ZONES[0], "QUOTA_EXCEEDED", "Quota 'CPUS' exceeded. Limit: 24.0")
    with pytest.raises(QuotaError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert info.value.code == "QUOTA_EXCEEDED"
    assert len(fake_gce.calls("insert")) == 1  # quota is not a reason to try another zone
    assert fake_gce.instances == {}


async def test_capacity_in_the_first_zone_fails_over_to_the_next(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.exhausted_zones.add(ZONES[0])
    inst = await gce_set.create(ITYPE, IMAGE, {"t": "1"}, InitCommand(""), None)
    inserts = fake_gce.calls("insert")
    assert [ZONES[0] in r.path for r in inserts] == [True, False]
    assert inserts[0].query["requestId"] != inserts[1].query["requestId"]
    assert inserts[0].body["name"] == inserts[1].body["name"] == inst.id
    assert list(fake_gce.instances) == [(ZONES[1], inst.id)]
    await inst.destroy()


async def test_capacity_everywhere_raises_capacity_error(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.exhausted_zones.update(ZONES)
    with pytest.raises(CapacityError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert info.value.code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert info.value.instance_type_specific
    assert len(fake_gce.calls("insert")) == 2


async def test_http_503_insufficient_capacity_fails_over(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail("insert", 503, "insufficientCapacity", "Not enough resources")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert list(fake_gce.instances) == [(ZONES[1], inst.id)]
    await inst.destroy()


async def test_lost_insert_response_is_retried_with_the_same_request_id(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.drop_response("insert")
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    first, second = fake_gce.calls("insert")
    assert first.query["requestId"] == second.query["requestId"]
    assert len(fake_gce.instances) == 1
    assert [i.id for i in await gce_set.instances()] == [inst.id]
    await inst.destroy()


async def test_other_http_errors_are_cloud_errors_with_the_reason(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.fail("insert", 400, "invalid", "Invalid value for field 'resource.machineType'")
    with pytest.raises(CloudError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert type(info.value) is CloudError
    assert info.value.code == "invalid"


async def test_rate_limit_on_delete_raises_and_the_instance_stays(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    fake_gce.fail("delete", 403, "rateLimitExceeded", "slow down")
    with pytest.raises(RateLimitError):
        await inst.destroy()
    assert len(fake_gce.instances) == 1
    await inst.destroy()


async def test_zone_that_succeeded_last_is_tried_first(fake_gce: FakeCompute) -> None:
    async with await DRIVER.instance_set(
        gce_config(fake_gce), InstanceSetID("order"), {}, logging.getLogger("test")
    ) as iset:
        fake_gce.exhausted_zones.add(ZONES[0])
        first = await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        fake_gce.exhausted_zones.clear()
        second = await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        assert ZONES[1] in fake_gce.calls("insert")[-1].path
        await first.destroy()
        await second.destroy()


# The wire formats of GCE's regional quota errors, as recorded: a 403 on the
# insert itself, and an insert operation that finishes with QUOTA_EXCEEDED
# and a quotaInfo detail.
CPUS_MESSAGE = "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1."
N2_CPUS_MESSAGE = "Quota 'N2_CPUS' exceeded.  Limit: 8.0 in region us-central1."


def _quota_info(metric: str, region: str) -> list[dict[str, Any]]:
    return [
        {
            "quotaInfo": {
                "metricName": f"compute.googleapis.com/{metric.lower()}",
                "limitName": f"{metric.replace('_', '-')}-per-project-region",
                "limit": 8,
                "dimensions": {"region": region},
            }
        }
    ]


def _regional_quota(fake: FakeCompute, how: str, zone: str) -> None:
    region = zone.rsplit("-", 1)[0]
    if how == "http CPUS":
        message = CPUS_MESSAGE.replace("us-central1", region)
        fake.fail("insert", 403, "quotaExceeded", message, domain="usageLimits")
    else:
        metric = "N2_CPUS" if how == "operation N2_CPUS" else "CPUS"
        message = N2_CPUS_MESSAGE.replace("N2_CPUS", metric).replace("us-central1", region)
        fake.fail_operation(
            zone, "QUOTA_EXCEEDED", message, 403, details=_quota_info(metric, region)
        )


REGIONAL_QUOTAS = pytest.mark.parametrize(
    "how", ["http CPUS", "operation CPUS", "operation N2_CPUS"]
)


def test_quota_region_is_read_from_gce_messages() -> None:
    assert quota_region(QuotaError(CPUS_MESSAGE)) == "us-central1"
    assert quota_region(QuotaError(N2_CPUS_MESSAGE)) == "us-central1"
    globally = "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
    assert quota_region(QuotaError(globally)) is None


@REGIONAL_QUOTAS
async def test_regional_quota_is_not_a_zone_problem(
    gce_set: cloudvm.InstanceSet,
    fake_gce: FakeCompute,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    _regional_quota(fake_gce, how, ZONES[0])
    with caplog.at_level(logging.DEBUG), pytest.raises(QuotaError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert info.value.code in ("quotaExceeded", "QUOTA_EXCEEDED")
    # The other zone is in the same region, under the same quota: not tried.
    assert len(fake_gce.calls("insert")) == 1
    assert not any("capacity" in r.getMessage() for r in caplog.records)
    assert fake_gce.instances == {}


async def test_a_family_quota_is_also_quota_group_specific(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    _regional_quota(fake_gce, "operation N2_CPUS", ZONES[0])
    with pytest.raises(QuotaGroupError) as info:
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert info.value.quota_group_specific
    assert not info.value.instance_type_specific
    assert len(fake_gce.calls("insert")) == 1


MULTI_REGION = ["us-central1-a", "us-central1-b", "europe-west1-b"]


@REGIONAL_QUOTAS
async def test_regional_quota_moves_on_to_the_zones_of_other_regions_only(
    fake_gce: FakeCompute, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    config = gce_config(fake_gce, zones=MULTI_REGION)
    async with await DRIVER.instance_set(
        config, InstanceSetID("regions"), {}, logging.getLogger("test.gce")
    ) as iset:
        _regional_quota(fake_gce, how, MULTI_REGION[0])
        with caplog.at_level(logging.DEBUG):
            inst = await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        assert [r.path.split("/")[6] for r in fake_gce.calls("insert")] == [
            MULTI_REGION[0],
            MULTI_REGION[2],
        ]
        assert list(fake_gce.instances) == [(MULTI_REGION[2], inst.id)]
        assert not any("capacity" in r.getMessage() for r in caplog.records)
        await inst.destroy()


async def test_quota_used_up_in_every_region_raises_the_quota_error(
    fake_gce: FakeCompute,
) -> None:
    config = gce_config(fake_gce, zones=MULTI_REGION)
    async with await DRIVER.instance_set(
        config, InstanceSetID("regions"), {}, logging.getLogger("test.gce")
    ) as iset:
        _regional_quota(fake_gce, "operation N2_CPUS", MULTI_REGION[0])
        _regional_quota(fake_gce, "operation N2_CPUS", MULTI_REGION[2])
        with pytest.raises(QuotaGroupError) as info:
            await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        assert "europe-west1" in str(info.value)
        assert len(fake_gce.calls("insert")) == 2
        assert fake_gce.instances == {}


async def test_project_wide_quota_ends_create_at_once(fake_gce: FakeCompute) -> None:
    config = gce_config(fake_gce, zones=MULTI_REGION)
    async with await DRIVER.instance_set(
        config, InstanceSetID("regions"), {}, logging.getLogger("test.gce")
    ) as iset:
        globally = "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
        fake_gce.fail("insert", 403, "quotaExceeded", globally, domain="usageLimits")
        with pytest.raises(QuotaError):
            await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        assert len(fake_gce.calls("insert")) == 1


@pytest.mark.parametrize("code", ["RESOURCE_ALREADY_EXISTS", "alreadyExists"])
async def test_a_conflict_inside_a_resent_inserts_operation_is_our_own_instance(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute, code: str
) -> None:
    fake_gce.drop_response("insert")  # the first insert is made, its answer lost
    fake_gce.conflict_in_operation(code)  # the resent one's operation finds the name taken
    inst = await gce_set.create(ITYPE, IMAGE, {"k": "v"}, InitCommand(""), None)
    first, second = fake_gce.calls("insert")
    assert first.query["requestId"] == second.query["requestId"]
    assert list(fake_gce.instances) == [(ZONES[0], inst.id)]
    assert inst.tags == {"k": "v"}
    assert inst.address.startswith("10.128.")
    assert [i.id for i in await gce_set.instances({"k": "v"})] == [inst.id]
    await inst.destroy()


async def test_a_conflict_inside_the_operation_with_someone_elses_instance_fails(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    first_gate = fake_gce.hold("insert")
    second_gate = fake_gce.hold("insert")
    first_gate.set()
    fake_gce.drop_response("insert")
    fake_gce.conflict_in_operation()
    task = asyncio.ensure_future(gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None))
    try:
        with anyio.fail_after(30):
            await fake_gce.wait_for_calls("insert", 2)
        # Meanwhile the name has become another instance's (another secret).
        ((_zone, _name), raw) = next(iter(fake_gce.instances.items()))
        for item in raw["metadata"]["items"]:
            if item["key"] == "cloudvm-secret":
                item["value"] = "someone-elses-secret"
    finally:
        second_gate.set()
    with pytest.raises(CloudError) as info:
        await task
    assert info.value.code == "RESOURCE_ALREADY_EXISTS"
    assert not isinstance(info.value, (CapacityError, QuotaError))
    fake_gce.instances.clear()  # not ours to destroy
