"""EC2's error codes, classified by what the caller should do next.

The tables follow what the Arvados EC2 driver does (and Karpenter, for two
capacity codes). Everything here is pure: the
driver feeds it a code and a message and gets a decision back, so each rule
has a table-driven test (``tests/test_ec2_errors.py``).
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta

from cloudvm import CapacityError, CloudError, QuotaError, RateLimitError

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "QUOTA_CODES",
    "THROTTLE_CODES",
    "Backoff",
    "CallKind",
    "EC2APIError",
    "classify",
    "is_capacity_error",
    "is_subnet_specific",
]

#: Codes meaning "you are calling too fast" (aws-sdk-go's list, plus SlowDown).
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "SlowDown",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "BandwidthLimitExceeded",
    }
)
#: Codes meaning "the account may not create more until something is destroyed".
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "InsufficientAddressCapacity",
        "InsufficientFreeAddressesInSubnet",
        "InsufficientVolumeCapacity",
        "MaxSpotInstanceCountExceeded",
    }
)
#: Capacity codes that another quota group may avoid (the vCPU quota of a group).
_QUOTA_GROUP_CAPACITY_CODES = frozenset({"VcpuLimitExceeded"})
#: Capacity codes that another instance type may avoid.
_TYPE_CAPACITY_CODES = frozenset(
    {"InsufficientInstanceCapacity", "UnfulfillableCapacity", "ReservationCapacityExceeded"}
)
# InvalidParameter* errors whose message shows that another subnet may work
# (see test_ec2_errors.py for the messages EC2 really sends).
_SUBNET_MESSAGE = re.compile(r"( subnet |sufficient free [Ii]pv[46] addresses)", re.S)

BACKOFF_MIN = 1.0  # seconds: the first hold-off after a throttled call
BACKOFF_MAX = 60.0  # seconds: the hold-off never grows past this


class CallKind(enum.Enum):
    """Which throttling backoff a call counts against. EC2 meters RunInstances
    and the describe calls in separate token buckets, so a throttled create
    must not slow listings down and vice versa."""

    CREATE = "create"  # RunInstances and the key-pair calls made for it
    LIST = "list"  # DescribeInstances and DescribeSpotPriceHistory
    OTHER = "other"  # tags and terminations


class Backoff:
    """The growing hold-off for a provider that sends no Retry-After:
    ``d = d * 1.5 + 1`` seconds, clamped to [``BACKOFF_MIN``, ``BACKOFF_MAX``],
    back to zero after any call that was not throttled (as Arvados does)."""

    def __init__(self) -> None:
        self._delay = 0.0

    @property
    def delay(self) -> float:
        """The last hold-off handed out (0 after a reset)."""
        return self._delay

    def next_delay(self) -> float:
        """Record one more throttled call and return the hold-off in seconds."""
        self._delay = min(max(self._delay * 1.5 + 1.0, BACKOFF_MIN), BACKOFF_MAX)
        return self._delay

    def reset(self) -> None:
        """Record a call that was not throttled."""
        self._delay = 0.0


class EC2APIError(CloudError):
    """An EC2 error that is not throttling, quota or capacity, or a failure to
    reach the endpoint at all.

    ============= ============================================================
    Field         Meaning
    ============= ============================================================
    code          EC2's error code (``"InvalidAMIID.NotFound"``); None when
                  no answer arrived
    operation     the API action (``"RunInstances"``)
    request_id    EC2's request id, for AWS support; None when unknown
    status        the HTTP status; None when no answer arrived
    ============= ============================================================
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        operation: str,
        request_id: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.operation = operation
        self.request_id = request_id
        self.status = status


def is_capacity_error(code: str, message: str) -> bool:
    """True if retrying with another instance type might succeed."""
    return code in _TYPE_CAPACITY_CODES or (
        code == "Unsupported" and "requested instance type" in message
    )


def is_subnet_specific(code: str, message: str) -> bool:
    """True if RunInstances might succeed in another subnet."""
    return (
        "Subnet" in code
        or code in ("InsufficientInstanceCapacity", "InsufficientVolumeCapacity", "Unsupported")
        or ("InvalidParameter" in code and _SUBNET_MESSAGE.search(message) is not None)
    )


def classify(
    *,
    code: str,
    message: str,
    operation: str,
    request_id: str | None,
    status: int | None,
    backoff: Backoff,
    now: datetime | None = None,
) -> CloudError:
    """Turn one EC2 error answer into the cloudvm error the caller acts on,
    updating ``backoff``: it grows for throttling and resets otherwise.

    A 429 status counts as throttling whatever the code says.
    """
    where = f" (request id {request_id})" if request_id else ""
    text = f"EC2 {operation}: {code}: {message}{where}"
    if code in THROTTLE_CODES or status == 429:
        delay = backoff.next_delay()
        when = (now or datetime.now(UTC)) + timedelta(seconds=delay)
        return RateLimitError(f"{text}; retry in {delay:g} s", when, code=code)
    backoff.reset()
    if code in QUOTA_CODES:
        return QuotaError(text, code=code)
    if code in _QUOTA_GROUP_CAPACITY_CODES:
        return CapacityError(
            text, instance_type_specific=False, quota_group_specific=True, code=code
        )
    if is_capacity_error(code, message):
        return CapacityError(
            text, instance_type_specific=True, quota_group_specific=False, code=code
        )
    return EC2APIError(text, code=code, operation=operation, request_id=request_id, status=status)
