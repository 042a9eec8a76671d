"""Azure's errors become cloudvm's: throttling, quota, capacity, cleanup."""

from __future__ import annotations

import email.utils
import logging
from datetime import UTC, datetime, timedelta

import cloudvm_azure
import prometheus_client
import pytest
from azure_fake_arm import DISK, NIC, VM, FakeARM
from azure_support import SET_ID, FakeCredential, make_config
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

from cloudvm import CapacityError, CloudError, InitCommand, QuotaError, RateLimitError


async def test_429_with_retry_after_seconds(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("GET", "/virtualMachines$", 429, "TooManyRequests", headers={"Retry-After": "17"})
    before = datetime.now(UTC)
    with pytest.raises(RateLimitError) as caught:
        await iset.instances()
    assert caught.value.code == "TooManyRequests"
    assert before + timedelta(seconds=16) <= caught.value.earliest_retry
    assert caught.value.earliest_retry <= datetime.now(UTC) + timedelta(seconds=18)
    # Exactly one request: azure-core's own retries are off.
    assert len(arm.calls("GET", "/virtualMachines$")) == 1
    assert await iset.instances() == []


async def test_429_with_retry_after_http_date(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=120)
    date = email.utils.format_datetime(when, usegmt=True)
    arm.inject("PUT", "/networkInterfaces/", 429, "TooManyRequests", headers={"Retry-After": date})
    with pytest.raises(RateLimitError) as caught:
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert caught.value.earliest_retry == when
    assert len(arm.calls("PUT", "")) == 1
    assert_nothing_left(arm)


async def test_429_without_retry_after_backs_off_growing(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("GET", "/virtualMachines$", 429, None, times=3)
    waits = []
    for _ in range(3):
        before = datetime.now(UTC)
        with pytest.raises(RateLimitError) as caught:
            await iset.instances()
        waits.append((caught.value.earliest_retry - before).total_seconds())
    assert waits[0] >= 0.9
    assert waits[0] < waits[1] < waits[2] <= 61
    assert await iset.instances() == []


async def test_a_throttled_nic_listing_fails_the_listing_it_runs_beside(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    arm.inject("GET", "/networkInterfaces$", 429, "TooManyRequests", headers={"Retry-After": "7"})
    with pytest.raises(RateLimitError) as caught:
        await iset.instances()
    assert "listing network interfaces" in str(caught.value)
    (listed,) = await iset.instances()
    assert listed.address
    await listed.destroy()


async def test_429_while_polling_a_long_running_operation(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("GET", "/operations/", 429, "TooManyRequests", headers={"Retry-After": "5"})
    with pytest.raises(RateLimitError):
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    # The NIC PUT was accepted before the throttled poll: it is tagged and
    # left for the sweep; no VM was attempted.
    assert arm.calls("PUT", "/virtualMachines/") == []
    (nic,) = arm.of_type(NIC)
    assert nic["tags"]["cloudvm-instance-set"] == "set-one"
    arm.resources.clear()


# ARM's answers to a VM PUT over a cores quota, in the wire format Azure
# uses (409 OperationNotAllowed; azure-core raises it as ResourceExistsError).
_DETAILS = (
    "Additional details - Deployment Model: Resource Manager, Location: westeurope, "
    "Current Limit: 16, Current Usage: 14, Additional Required: 4, "
    "(Minimum) New Limit Required: 18. Submit a request for Quota increase at "
    "https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView"
)
FAMILY_QUOTA = (
    "Operation could not be completed as it results in exceeding approved "
    f"standardDASv5Family Cores quota. {_DETAILS}"
)
REGIONAL_QUOTA = (
    "Operation could not be completed as it results in exceeding approved "
    f"Total Regional Cores quota. {_DETAILS}"
)
SPOT_QUOTA = (
    "Operation could not be completed as it results in exceeding approved "
    f"Total Regional Low-priority vCPUs quota. {_DETAILS}"
)


async def test_regional_quota_409_is_a_plain_quota_error_and_deletes_the_nic(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 409, "OperationNotAllowed", REGIONAL_QUOTA)
    with pytest.raises(QuotaError) as caught:
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert caught.value.code == "OperationNotAllowed"
    # No size of any family can be made in the region: not a capacity hint.
    assert not isinstance(caught.value, CapacityError)
    # The VM was refused outright: only the NIC needs deleting.
    deletes = [r.path.split("/")[-2] for r in arm.requests if r.method == "DELETE"]
    assert deletes == ["networkInterfaces"]
    assert_nothing_left(arm)


@pytest.mark.parametrize("message", [FAMILY_QUOTA, SPOT_QUOTA], ids=["family", "spot"])
async def test_a_quota_group_409_is_a_quota_error_specific_to_the_group(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, message: str
) -> None:
    arm.inject("PUT", "/virtualMachines/", 409, "OperationNotAllowed", message)
    with pytest.raises(QuotaError) as caught:
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    error = caught.value
    assert error.code == "OperationNotAllowed"
    # Both at once: nothing more of this group until something is destroyed,
    # but sizes of other quota groups may still succeed.
    assert isinstance(error, CapacityError)
    assert error.quota_group_specific is True
    assert error.instance_type_specific is False
    assert "Cores quota" in str(error) or "vCPUs quota" in str(error)
    assert_nothing_left(arm)


async def test_quota_exceeded_code_is_a_quota_error(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 400, "QuotaExceeded", "Cores quota exceeded.")
    with pytest.raises(QuotaError):
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert_nothing_left(arm)


@pytest.mark.parametrize(
    "code",
    [
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
        "SkuNotAvailable",
    ],
)
async def test_capacity_failure_at_the_end_of_the_lro(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, code: str
) -> None:
    arm.fail_operation("PUT", "/virtualMachines/", code, "No capacity for this size.")
    with pytest.raises(CapacityError) as caught:
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert caught.value.code == code
    assert caught.value.instance_type_specific is True
    assert caught.value.quota_group_specific is False
    # The failed VM is deleted, then its NIC; the disks go with the VM.
    deletes = [r.path.split("/")[-2] for r in arm.requests if r.method == "DELETE"]
    assert deletes == ["virtualMachines", "networkInterfaces"]
    assert_nothing_left(arm)


async def test_capacity_error_on_the_initial_put(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 409, "SkuNotAvailable", "The size is not available.")
    with pytest.raises(CapacityError):
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert_nothing_left(arm)


async def test_other_errors_are_cloud_errors_with_the_code(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 400, "InvalidParameter", "Bad image.")
    with pytest.raises(CloudError) as caught:
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert type(caught.value) is CloudError
    assert caught.value.code == "InvalidParameter"
    assert "Bad image." in str(caught.value)
    assert_nothing_left(arm)


async def test_a_failed_cleanup_leaves_a_tagged_nic_and_raises_the_first_error(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 400, "QuotaExceeded", "Cores quota exceeded.")
    arm.inject("DELETE", "/networkInterfaces/", 500, "InternalServerError", "oops")
    with pytest.raises(QuotaError):
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert arm.of_type(VM) == []
    assert arm.of_type(DISK) == []
    (nic,) = arm.of_type(NIC)
    assert nic["tags"]["cloudvm-instance-set"] == "set-one"
    arm.resources.clear()


async def test_429_with_retry_after_ms(arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet) -> None:
    arm.inject(
        "GET", "/virtualMachines$", 429, "TooManyRequests", headers={"x-ms-retry-after-ms": "4000"}
    )
    before = datetime.now(UTC)
    with pytest.raises(RateLimitError) as caught:
        await iset.instances()
    assert before + timedelta(seconds=3.9) <= caught.value.earliest_retry
    assert caught.value.earliest_retry <= datetime.now(UTC) + timedelta(seconds=4.1)


async def test_429_on_the_vm_put_deletes_the_nic(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    arm.inject("PUT", "/virtualMachines/", 429, "TooManyRequests", headers={"Retry-After": "3"})
    with pytest.raises(RateLimitError):
        await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    assert_nothing_left(arm)


async def test_calls_are_counted_by_operation_and_outcome(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> None:
    registry = prometheus_client.CollectorRegistry()
    instance_set = await cloudvm_azure.open_instance_set(
        make_config(arm), SET_ID, {}, logger, registry, credential=credential
    )
    async with instance_set:
        instance = await instance_set.create(SMALL, IMAGE, {}, InitCommand(""), None)
        arm.inject("GET", "/virtualMachines$", 429, None)
        with pytest.raises(RateLimitError):
            await instance_set.instances()
        await instance.destroy()

    def count(operation: str, outcome: str) -> float | None:
        return registry.get_sample_value(
            "cloudvm_api_calls_total",
            {"driver": "azure", "operation": operation, "outcome": outcome},
        )

    assert count("create", "ok") == 1
    assert count("instances", "RateLimitError") == 1
    assert count("destroy", "ok") == 1
    assert_nothing_left(arm)


async def test_a_throttled_poll_of_the_vm_leaves_it_to_be_listed(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    # The NIC's operation is polled first (skip it), then the VM's.
    arm.inject("GET", "Microsoft.Compute/locations/.*/operations/", 429, None)
    with pytest.raises(RateLimitError):
        await iset.create(SMALL, IMAGE, {"job": "a"}, InitCommand(""), None)
    assert [r for r in arm.requests if r.method == "DELETE"] == []
    (listed,) = await iset.instances({"job": "a"})
    await listed.destroy()
    assert_nothing_left(arm)
