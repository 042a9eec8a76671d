"""The EC2 listing: ``instances()`` against raw aiobotocore pages of the same
instances, as client CPU, wall time and memory kept per instance.

The API server (moto) runs in another process, so this process's CPU time
(``time.process_time``) is the client's alone: what one dispatcher pays per
listing whatever the server costs. Memory is what the listing's result keeps
alive, traced with ``tracemalloc`` (the raw side keeps the parsed instance
dicts, as a caller of the SDK would).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from _stats import CaseResult, Row, interleaved

from cloudvm import InstanceSet
from cloudvm.driverkit import SET_ID_TAG

__all__ = ["RAW", "listing_rows"]

#: The variant every driver variant is compared with.
RAW = "aiobotocore paginator"
PAGE_SIZE = 1000  # the driver's default DescribeInstances page size

_Listing = Callable[[], Awaitable[list[Any]]]


def _raw_listing(ec2: Any, set_id: str) -> _Listing:
    async def listing() -> list[Any]:
        paginator = ec2.get_paginator("describe_instances")
        filters = [{"Name": f"tag:{SET_ID_TAG}", "Values": [set_id]}]
        found: list[Any] = []
        async for page in paginator.paginate(
            Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}
        ):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
        return found

    return listing


def _driver_listing(instance_set: InstanceSet) -> _Listing:
    async def listing() -> list[Any]:
        return list(await instance_set.instances())

    return listing


def _timed(
    listing: _Listing, size: int, count: int, walls: list[float]
) -> Callable[[], Awaitable[float]]:
    """A probe: ``count`` listings; returns client CPU ms per listing and
    appends wall ms per listing to ``walls``."""

    async def probe() -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            found = await listing()
            assert len(found) == size, (len(found), size)
        walls.append((time.perf_counter() - wall) / count * 1000)
        return (time.process_time() - cpu) / count * 1000

    return probe


async def _bytes_kept(listing: _Listing, size: int) -> float:
    """Bytes per instance that a listing's result keeps alive."""
    await listing()  # warm every cache first: only the result is counted
    gc.collect()
    tracemalloc.start()
    try:
        kept = await listing()
        gc.collect()
        holding = tracemalloc.get_traced_memory()[0]
        assert len(kept) == size, (len(kept), size)
        del kept
        gc.collect()
        released = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (holding - released) / size


async def listing_rows(
    result: CaseResult,
    sets: Mapping[str, InstanceSet],
    ec2: Any,
    *,
    set_id: str,
    size: int,
    listings: int,
    repeats: int,
) -> None:
    """Add to ``result`` the rows of listing ``size`` instances with each of
    ``sets`` (variant name -> instance set) and with the raw paginator:
    client CPU and wall ms per listing (interleaved rounds), bytes kept per
    instance."""
    listings_by_name = {name: _driver_listing(s) for name, s in sets.items()}
    listings_by_name[RAW] = _raw_listing(ec2, set_id)
    walls: dict[str, list[float]] = {name: [] for name in listings_by_name}
    cpu = await interleaved(
        {
            name: _timed(listing, size, listings, walls[name])
            for name, listing in listings_by_name.items()
        },
        repeats=repeats,
    )
    walls = {name: values[-repeats:] for name, values in walls.items()}  # warm-up dropped
    kept = {name: [await _bytes_kept(listing, size)] for name, listing in listings_by_name.items()}
    for unit, samples in (
        ("client CPU ms per listing", cpu),
        ("wall ms per listing", walls),
        ("bytes kept per instance", kept),
    ):
        for name, values in samples.items():
            baseline = None if name == RAW else (RAW,)
            result.rows.append(Row(result.name, name, unit, values, n=size, ratio_to=baseline))
