"""Create holds: when the cloud's answers say creates are refused for a while."""

from __future__ import annotations

from datetime import datetime, timedelta

from .._errors import CapacityError, RateLimitError
from .._resilient import ResiliencePolicy
from .._types import InstanceType
from ._clock import seconds_until
from ._context import PoolContext
from ._events import PoolEvent, PoolEventKind

__all__ = ["MIN_CREATE_HOLD", "CreateHolds"]

#: The shortest create hold after a RateLimitError, whatever its earliest_retry.
MIN_CREATE_HOLD = 1.0
# ("type", provider_type, preemptible) | ("group", group, False) | ("all", "", False)
_ShortageKey = tuple[str, str, bool]


class CreateHolds:
    """Which creates are refused now, without a cloud call, and until when.

    A QuotaError holds every create until an instance is destroyed or the
    policy's ``quota_hold`` passes; a CapacityError holds creates of what it
    covers (a provider type, a quota group, every type) for ``capacity_hold``;
    a RateLimitError holds every create until its ``earliest_retry``. A hold
    that starts is logged and published as a HOLD event.
    """

    def __init__(self, ctx: PoolContext, policy: ResiliencePolicy) -> None:
        self._clock = ctx.clock
        self._policy = policy
        self._set = ctx.instance_set
        self._hub = ctx.hub
        self._logger = ctx.logger
        self._quota_until: float | None = None
        self._rate_limit_until: float | None = None
        self._shortages: dict[_ShortageKey, float] = {}

    def refusal(self, itype: InstanceType) -> str | None:
        """Why a create of ``itype`` is refused now ("quota", "rate_limit",
        "capacity"), or None."""
        if self.at_quota():
            return "quota"
        if self.is_held():
            return "rate_limit"
        if self.shortage_for(itype) is not None:
            return "capacity"
        return None

    def at_quota(self) -> bool:
        return self._quota_until is not None and self._clock.now() < self._quota_until

    def is_held(self) -> bool:
        return self._rate_limit_until is not None and self._clock.now() < self._rate_limit_until

    def shortage_for(self, itype: InstanceType) -> _ShortageKey | None:
        """The remembered CapacityError scope covering ``itype``, if any (an
        expired one is forgotten here)."""
        now = self._clock.now()
        for key in self._shortage_keys(itype):
            until = self._shortages.get(key)
            if until is not None:
                if now < until:
                    return key
                del self._shortages[key]
        return None

    def _shortage_keys(self, itype: InstanceType) -> list[_ShortageKey]:
        keys: list[_ShortageKey] = [
            ("all", "", False),
            ("type", itype.provider_type, itype.preemptible),
        ]
        # The quota group is the driver's answer: asked only once a group shortage is known.
        if any(key[0] == "group" for key in self._shortages):
            keys.append(("group", self._set.instance_quota_group(itype), False))
        return keys

    def hold_quota(self, text: str) -> None:
        """A create answered QuotaError (``text``, escaped)."""
        seconds = self._policy.quota_hold or MIN_CREATE_HOLD
        starts = not self.at_quota()
        self._quota_until = self._clock.now() + seconds
        if starts:
            self._logger.info("at quota: creates held: %s", text, extra={"hold": "quota"})
            self._announce(PoolEventKind.HOLD, "quota", text, until=self._wall_in(seconds))

    def hold_capacity(self, itype: InstanceType, exc: CapacityError, text: str) -> None:
        """A create of ``itype`` answered CapacityError ``exc`` (``text``, escaped)."""
        if exc.instance_type_specific:
            key: _ShortageKey = ("type", itype.provider_type, itype.preemptible)
        elif exc.quota_group_specific:
            key = ("group", self._set.instance_quota_group(itype), False)
        else:
            key = ("all", "", False)
        seconds = self._policy.capacity_hold or MIN_CREATE_HOLD
        until = self._shortages.get(key)
        self._shortages[key] = self._clock.now() + seconds
        if until is None or until <= self._clock.now():
            self._logger.info(
                "no capacity for %s: creates of it held: %s",
                key[1] or "any type",
                text,
                extra={"hold": "capacity", "scope": key[0], "provider_type": key[1]},
            )
            reason = f"{key[0]} {key[1]}".strip() + f": {text}"
            self._announce(PoolEventKind.HOLD, "capacity", reason, until=self._wall_in(seconds))

    def hold_rate_limit(self, exc: RateLimitError, text: str) -> None:
        """A create answered RateLimitError ``exc`` (``text``, escaped)."""
        seconds = seconds_until(self._clock, exc.earliest_retry, at_least=MIN_CREATE_HOLD)
        starts = not self.is_held()
        until = self._clock.now() + seconds
        # Another create's earlier answer may hold longer: the longest wins.
        if self._rate_limit_until is None or until > self._rate_limit_until:
            self._rate_limit_until = until
        if starts:
            self._announce(PoolEventKind.HOLD, "rate_limit", text, until=self._wall_in(seconds))

    def instance_destroyed(self) -> None:
        """A destroy succeeded: there is room under the quota again."""
        if self._quota_until is None:
            return
        was = self.at_quota()
        self._quota_until = None
        if was:
            self._announce(PoolEventKind.HOLD_ENDED, "quota", "destroyed")

    def _announce(
        self, kind: PoolEventKind, hold: str, reason: str, *, until: datetime | None = None
    ) -> None:
        self._hub.publish(
            PoolEvent(kind=kind, time=self._clock.wall(), reason=reason, hold=hold, until=until)
        )

    def _wall_in(self, seconds: float) -> datetime:
        return self._clock.wall() + timedelta(seconds=seconds)
