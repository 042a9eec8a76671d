"""Translate Compute API errors into cloudvm's classification, in one place.

A call fails either at once (an HTTP error: google-api-core raises a
``GoogleAPICallError`` subclass with the reasons of ``error.errors`` in
``exc.errors``) or later, inside a finished operation (``Operation.error``
lists ``{code, message}`` items). Both paths go through :func:`classify`.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from google.api_core import exceptions as gexc

from cloudvm import CapacityError, CloudError, QuotaError, RateLimitError

__all__ = [
    "ALREADY_EXISTS_CODES",
    "CAPACITY_CODES",
    "QUOTA_CODES",
    "RATE_LIMIT_CODES",
    "QuotaGroupError",
    "classify",
    "is_not_found",
    "quota_region",
    "wrap_api_error",
]

# Reasons (HTTP ``error.errors[].reason``) and operation error codes meaning
# "too many calls": GCE counts API calls in fixed 60 s windows per project.
RATE_LIMIT_CODES = frozenset(
    {
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "RATE_LIMIT_EXCEEDED",
        # Too many operations on one resource at once (an operation error code).
        "RESOURCE_OPERATION_RATE_EXCEEDED",
    }
)
# "The project may not create more": a CPU, address, disk or instance quota.
QUOTA_CODES = frozenset({"quotaExceeded", "QUOTA_EXCEEDED", "limitExceeded"})
# "The zone has no capacity now": try another zone, or another type later.
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "insufficientCapacity",
        "resourceExhausted",
        "STOCKOUT",
    }
)
# "A resource of that name exists": the synchronous 409's reason, and the
# code an operation that found the name taken finishes with.
ALREADY_EXISTS_CODES = frozenset({"alreadyExists", "RESOURCE_ALREADY_EXISTS"})
# GCE names the region a quota is counted in: "Limit: 8.0 in region us-east1."
# (a project-wide quota says "globally" instead).
_QUOTA_REGION = re.compile(r"\bin region ([a-z]+-[a-z]+[0-9]+)\b")
# Quota metrics that belong to one machine family or to spot capacity
# ("Quota 'N2_CPUS' exceeded"): other quota groups may still succeed.
_FAMILY_QUOTA = re.compile(r"Quota '([A-Z0-9]+_CPUS|PREEMPTIBLE_CPUS|[A-Z0-9_]*GPUS)' exceeded")
_FALLBACK_DELAY = timedelta(seconds=1)


class QuotaGroupError(QuotaError, CapacityError):
    """Raised by ``create`` when a quota of one machine family (``N2_CPUS``)
    or of spot capacity is used up: nothing more of that quota group can be
    created until something is destroyed, but other groups may still work."""


def _next_minute(now: datetime) -> datetime:
    # GCE's API rate quotas are per-minute windows; the next one starts at the
    # next minute boundary.
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _retry_after(headers: Mapping[str, str], now: datetime) -> datetime | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return now + timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def classify(
    codes: Iterable[str],
    message: str,
    *,
    http_status: int | None = None,
    headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> CloudError | None:
    """Return the cloudvm error that ``codes`` (reasons or operation error
    codes) and ``http_status`` mean, or None when they mean none of
    rate limit, quota or capacity."""
    now = now or datetime.now(UTC)
    code_list = [c for c in codes if c]
    first = code_list[0] if code_list else None
    rate = [c for c in code_list if c in RATE_LIMIT_CODES]
    if http_status == 429 or rate:
        earliest = _retry_after(headers or {}, now) or _next_minute(now)
        earliest = max(earliest, now + _FALLBACK_DELAY)
        return RateLimitError(message, earliest, code=(rate or [first or "429"])[0])
    quota = [c for c in code_list if c in QUOTA_CODES]
    if quota:
        if _FAMILY_QUOTA.search(message):
            return QuotaGroupError(
                message,
                instance_type_specific=False,
                quota_group_specific=True,
                code=quota[0],
            )
        return QuotaError(message, code=quota[0])
    capacity = [c for c in code_list if c in CAPACITY_CODES]
    if capacity:
        return CapacityError(
            message,
            instance_type_specific=True,
            quota_group_specific=False,
            code=capacity[0],
        )
    return None


def quota_region(error: QuotaError) -> str | None:
    """The region whose quota ``error`` says is used up, or None for a
    project-wide quota (or one whose message names no region).

    GCE counts quota per region or per project, never per zone: a quota
    error is no reason to try another zone of the same region."""
    match = _QUOTA_REGION.search(str(error))
    return match.group(1) if match else None


def _reasons(exc: gexc.GoogleAPICallError) -> list[str]:
    reasons = [str(e.get("reason", "")) for e in exc.errors if isinstance(e, Mapping)]
    if exc.reason:  # from a google.rpc.ErrorInfo detail, when the server sends one
        reasons.append(exc.reason)
    return reasons


def wrap_api_error(exc: gexc.GoogleAPICallError, what: str) -> CloudError:
    """The cloudvm error for an HTTP error of the Compute API; a plain
    CloudError (with the HTTP status as ``code``) when it is none of rate
    limit, quota or capacity. ``what`` names the call, for the message."""
    response = exc.response
    headers: Mapping[str, str] = {}
    if response is not None and getattr(response, "headers", None) is not None:
        headers = dict(response.headers)
    message = f"GCE {what} failed: {exc.message}"
    wrapped = classify(_reasons(exc), message, http_status=exc.code, headers=headers)
    if wrapped is not None:
        return wrapped
    reasons = _reasons(exc)
    return CloudError(message, code=reasons[0] if reasons else str(exc.code))


def is_not_found(exc: BaseException) -> bool:
    """True for a 404: the resource does not exist (any more)."""
    return isinstance(exc, gexc.NotFound)
