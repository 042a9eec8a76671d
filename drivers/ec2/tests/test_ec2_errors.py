"""The error tables and the backoff, as pure functions (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cloudvm_ec2 import BACKOFF_MAX, BACKOFF_MIN, QUOTA_CODES, THROTTLE_CODES, EC2APIError
from cloudvm_ec2._errors import Backoff, classify, is_capacity_error, is_subnet_specific

import cloudvm

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_backoff_grows_by_half_plus_one_second_and_clamps() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    expected = [1.0]
    while len(expected) < 12:
        expected.append(min(expected[-1] * 1.5 + 1, 60.0))
    assert delays == expected
    assert delays[:4] == [1.0, 2.5, 4.75, 8.125]
    assert max(delays) == BACKOFF_MAX and min(delays) == BACKOFF_MIN
    backoff.reset()
    assert backoff.delay == 0.0
    assert backoff.next_delay() == 1.0


def test_throttling_sets_earliest_retry_from_the_backoff() -> None:
    backoff = Backoff()
    for delay in (1.0, 2.5, 4.75):
        error = classify(
            code="RequestLimitExceeded",
            message="Request limit exceeded.",
            operation="RunInstances",
            request_id="r-1",
            status=503,
            backoff=backoff,
            now=NOW,
        )
        assert isinstance(error, cloudvm.RateLimitError)
        assert error.earliest_retry == NOW + timedelta(seconds=delay)
        assert error.code == "RequestLimitExceeded"
        assert "r-1" in str(error)


def test_any_other_answer_resets_the_backoff() -> None:
    backoff = Backoff()
    backoff.next_delay()
    backoff.next_delay()
    classify(
        code="InvalidAMIID.NotFound",
        message="no",
        operation="RunInstances",
        request_id=None,
        status=400,
        backoff=backoff,
    )
    assert backoff.delay == 0.0


@pytest.mark.parametrize("code", sorted(THROTTLE_CODES))
def test_throttle_table(code: str) -> None:
    error = classify(
        code=code, message="", operation="X", request_id=None, status=400, backoff=Backoff()
    )
    assert isinstance(error, cloudvm.RateLimitError)


@pytest.mark.parametrize("code", sorted(QUOTA_CODES))
def test_quota_table(code: str) -> None:
    error = classify(
        code=code, message="", operation="X", request_id=None, status=400, backoff=Backoff()
    )
    assert isinstance(error, cloudvm.QuotaError)
    assert not isinstance(error, cloudvm.CapacityError)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("InsufficientInstanceCapacity", "", True),
        ("UnfulfillableCapacity", "", True),
        ("ReservationCapacityExceeded", "", True),
        ("Unsupported", "Your requested instance type (x) is not supported", True),
        ("Unsupported", "The requested configuration is currently not supported", False),
        ("VcpuLimitExceeded", "", False),  # capacity of a quota group, not of a type
        ("InstanceLimitExceeded", "", False),
    ],
)
def test_capacity_table(code: str, message: str, expected: bool) -> None:
    assert is_capacity_error(code, message) is expected


def test_unknown_codes_are_ec2_api_errors() -> None:
    error = classify(
        code="AuthFailure",
        message="AWS was not able to validate the provided access credentials",
        operation="DescribeInstances",
        request_id="abc-123",
        status=401,
        backoff=Backoff(),
    )
    assert type(error) is EC2APIError
    assert (error.code, error.operation, error.request_id, error.status) == (
        "AuthFailure",
        "DescribeInstances",
        "abc-123",
        401,
    )
    assert str(error) == (
        "EC2 DescribeInstances: AuthFailure: AWS was not able to validate the provided "
        "access credentials (request id abc-123)"
    )


_REQUEST = "\n\tstatus code: 400, request id: abcdef01-2345-6789-abcd-ef0123456789"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("InsufficientInstanceCapacity", "", True),
        ("InsufficientVolumeCapacity", "", True),
        ("Unsupported", "", True),
        ("InvalidSubnetID.NotFound", "The subnet ID 'subnet-1' does not exist", True),
        (
            "InsufficientFreeAddressesInSubnet",
            "Not enough free addresses in subnet subnet-ab" + _REQUEST,
            True,
        ),
        # EC2 sometimes sends InvalidParameterValue for a full subnet.
        ("InvalidParameterValue", "Not enough free addresses in subnet subnet-ab" + _REQUEST, True),
        (
            "Client.InvalidParameterValue",
            "There aren't sufficient free Ipv4 addresses or prefixes",
            True,
        ),
        ("InvalidParameterValue", "There aren't sufficient free Ipv4 addresses or prefixes", True),
        (
            "ClientInvalidParameterValue",
            "There aren't sufficient free Ipv4 addresses or prefixes",
            True,
        ),
        ("InvalidParameterValue", "Some other invalid parameter error", False),
        ("RequestLimitExceeded", "", False),
        ("InstanceLimitExceeded", "", False),
        ("InvalidAMIID.NotFound", "", False),
    ],
)
def test_subnet_specific_errors(code: str, message: str, expected: bool) -> None:
    assert is_subnet_specific(code, message) is expected
