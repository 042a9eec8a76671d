"""Turning azure-core's exceptions into cloudvm's error classes."""

from __future__ import annotations

import email.utils
import json
import re
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import HttpResponseError

from cloudvm import CapacityError, CloudError, QuotaError, RateLimitError

__all__ = ["Backoff", "QuotaGroupError", "error_code", "map_error", "retry_after"]

_QUOTA_CODES = frozenset({"quotaexceeded", "resourcequotaexceeded", "spotquotaexceeded"})
# OperationNotAllowed also means other things (a disk still attached, ...):
# only its quota messages are quota errors.
_QUOTA_WORDS = ("quota", "cores", "vcpu", "limit")
# A quota of one VM family ("exceeding approved standardDASv5Family Cores
# quota") or of spot capacity ("Low-priority vCPUs", "LowPriorityCores"), as
# opposed to the region's total ("Total Regional Cores quota"): sizes of other
# quota groups (InstanceSet.instance_quota_group) may still be created.
_GROUP_QUOTA = re.compile(
    r"\b(?:standard|basic)\w*family\b|\blow[ -]?priority",
    re.IGNORECASE,
)
# code -> (instance_type_specific, quota_group_specific)
_CAPACITY_CODES = {
    "allocationfailed": (True, False),
    "zonalallocationfailed": (True, False),
    "overconstrainedallocationrequest": (True, False),
    "overconstrainedzonalallocationrequest": (True, False),
    "skunotavailable": (True, False),
}

BACKOFF_MIN = 1.0  # seconds, the first wait when Azure names none
BACKOFF_MAX = 60.0  # seconds


class QuotaGroupError(QuotaError, CapacityError):
    """A quota of one quota group is used up: a VM family's cores
    (``standardDASv5Family``) or the region's spot (``lowPriority``) cores.
    Nothing more of that group can be made until something is destroyed
    (a QuotaError), but sizes of other groups may still succeed (a
    CapacityError with ``quota_group_specific``)."""


class Backoff:
    """A growing wait for throttling without a Retry-After, per kind of call:
    d = d * 1.5 + 1 s, clamped to [1 s, 60 s]; reset by a success."""

    def __init__(self) -> None:
        self._delays: dict[str, float] = {}

    def next(self, kind: str) -> float:
        delay = min(max(self._delays.get(kind, 0.0) * 1.5 + 1.0, BACKOFF_MIN), BACKOFF_MAX)
        self._delays[kind] = delay
        return delay

    def reset(self, kind: str) -> None:
        self._delays.pop(kind, None)


def retry_after(headers: object, now: datetime) -> datetime | None:
    """The moment named by a Retry-After header (seconds or an HTTP date),
    or by retry-after-ms / x-ms-retry-after-ms; None when absent or unreadable."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("Retry-After") or get("retry-after")
    if value:
        text = str(value).strip()
        try:
            return now + timedelta(seconds=max(0.0, float(text)))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(when.astimezone(UTC), now)
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = get(name)
        if value:
            try:
                return now + timedelta(milliseconds=max(0.0, float(str(value))))
            except ValueError:
                return None
    return None


def error_code(exc: HttpResponseError) -> tuple[str, str]:
    """ARM's error code and message: from azure-core's parsed ``error`` when
    there is one, else from the response body's ``{"error": {...}}``."""
    odata = exc.error
    if odata is not None and odata.code:
        return str(odata.code), str(odata.message or exc.message or "")
    response = exc.response
    if response is not None:
        try:
            body = json.loads(response.text())
        except (ValueError, TypeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            return str(error.get("code") or ""), str(error.get("message") or "")
    return "", str(exc.message or exc)


def map_error(exc: HttpResponseError, *, kind: str, backoff: Backoff, what: str) -> CloudError:
    """The cloudvm error for one failed ARM call (or long-running operation).

    ``kind`` names the call family for the throttling backoff (``"create"``,
    ``"list"``, ...); ``what`` starts the message.
    """
    code, message = error_code(exc)
    status = exc.status_code
    now = datetime.now(UTC)
    text = f"{what}: {code or status}: {message}".rstrip(": ")
    when = retry_after(getattr(exc.response, "headers", None), now)
    lowered = code.lower()
    if status == 429 or lowered in {"toomanyrequests", "throttled"}:
        if when is None or when <= now:
            when = now + timedelta(seconds=backoff.next(kind))
        return RateLimitError(text, when, code=code or "TooManyRequests")
    if lowered in _QUOTA_CODES or (
        lowered == "operationnotallowed" and any(w in message.lower() for w in _QUOTA_WORDS)
    ):
        if lowered == "spotquotaexceeded" or _GROUP_QUOTA.search(message):
            return QuotaGroupError(
                text, instance_type_specific=False, quota_group_specific=True, code=code
            )
        return QuotaError(text, code=code)
    if lowered in _CAPACITY_CODES:
        type_specific, group_specific = _CAPACITY_CODES[lowered]
        return CapacityError(
            text,
            instance_type_specific=type_specific,
            quota_group_specific=group_specific,
            code=code,
        )
    return CloudError(text, code=code or None)
