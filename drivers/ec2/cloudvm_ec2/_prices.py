"""Spot price history: a cache refreshed from DescribeSpotPriceHistory."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cloudvm import InstancePrice

__all__ = ["SpotPriceCache", "normalize_prices", "scratch_price_per_hour"]

_GIB = 1 << 30
_HOURS_PER_MONTH = 30 * 24  # EBS prices are per GiB-month; as Arvados, a month is 30 days
# Entries not refreshed for this many update intervals are forgotten.
_EXPIRY_INTERVALS = 64


def normalize_prices(prices: Iterable[InstancePrice]) -> list[InstancePrice]:
    """Sort newest first and drop repeated points for one start time (the
    API returns overlapping windows on successive refreshes)."""
    result: list[InstancePrice] = []
    for price in sorted(prices, key=lambda p: p.start_time, reverse=True):
        if not result or result[-1].start_time != price.start_time:
            result.append(price)
    return result


def scratch_price_per_hour(added_scratch: int, ebs_price: float) -> float:
    """What the added scratch volume costs per hour: ``ebs_price`` per
    GiB-month times the volume's size, ceil(GiB)."""
    if added_scratch <= 0:
        return 0.0
    return ebs_price * math.ceil(added_scratch / _GIB) / _HOURS_PER_MONTH


@dataclasses.dataclass(frozen=True)
class _Key:
    instance_type: str
    availability_zone: str


class SpotPriceCache:
    """Spot prices per (instance type, availability zone), with the time of
    their last refresh on the caller's clock (seconds)."""

    def __init__(self, update_interval: float) -> None:
        self.update_interval = update_interval
        self._prices: dict[_Key, list[InstancePrice]] = {}
        self._updated: dict[_Key, float] = {}

    def stale_types(self, wanted: Iterable[tuple[str, str]], now: float) -> list[str]:
        """The instance types among ``wanted`` (type, zone) pairs whose prices
        are older than the update interval, sorted; empty when all are fresh."""
        stale = {
            itype
            for itype, zone in wanted
            if now - self._updated.get(_Key(itype, zone), -math.inf) > self.update_interval
        }
        return sorted(stale)

    def record(
        self,
        entries: Iterable[Mapping[str, Any]],
        asked: Iterable[tuple[str, str]],
        now: float,
    ) -> None:
        """Store DescribeSpotPriceHistory ``entries`` after asking for the
        ``asked`` (type, zone) pairs: those count as fresh even without an
        entry, or every listing would ask again. Malformed entries are
        skipped; pairs not refreshed for a long time are forgotten."""
        asked = list(asked)
        types = {asked_type for asked_type, _ in asked}
        for asked_type, asked_zone in asked:
            self._updated[_Key(asked_type, asked_zone)] = now
        for entry in entries:
            itype, zone = entry.get("InstanceType"), entry.get("AvailabilityZone")
            stamp = entry.get("Timestamp")
            try:
                price = float(entry.get("SpotPrice", ""))
            except ValueError:
                continue
            if not (itype in types and zone and isinstance(stamp, datetime)):
                continue
            key = _Key(itype, zone)
            self._prices[key] = normalize_prices(
                [*self._prices.get(key, []), InstancePrice(stamp, price)]
            )
            self._updated[key] = now
        expired = now - _EXPIRY_INTERVALS * self.update_interval
        for key in [k for k, t in self._updated.items() if t < expired]:
            del self._updated[key]
            self._prices.pop(key, None)

    def history(self, instance_type: str, availability_zone: str) -> list[InstancePrice]:
        """Known prices, newest first."""
        return list(self._prices.get(_Key(instance_type, availability_zone), []))
