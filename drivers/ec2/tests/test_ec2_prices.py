"""Price history: spot prices from DescribeSpotPriceHistory (pages, newest
first, de-duplicated, refreshed per interval) plus the scratch volume's cost."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest
from cloudvm_ec2 import EC2Instance
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, itype

import cloudvm

_NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'


def history_page(entries: list[tuple[str, str, str]], next_token: str = "") -> str:
    items = "".join(
        f"<item><instanceType>c5.large</instanceType>"
        f"<productDescription>Linux/UNIX</productDescription><spotPrice>{price}</spotPrice>"
        f"<timestamp>{stamp}</timestamp><availabilityZone>{zone}</availabilityZone></item>"
        for price, stamp, zone in entries
    )
    return (
        f"<DescribeSpotPriceHistoryResponse {_NS}><requestId>r</requestId>"
        f"<spotPriceHistorySet>{items}</spotPriceHistorySet>"
        f"<nextToken>{next_token}</nextToken></DescribeSpotPriceHistoryResponse>"
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


async def test_spot_price_history_is_fetched_paged_sorted_and_deduplicated(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    # 72 GiB at 0.10 per GiB-month adds 0.01 per hour.
    instance_set = await make_set(endpoint=proxy.url, ebs_price=0.10)
    spot = itype("c5.large", price=0.085, preemptible=True, added_scratch=72 << 30)
    created = await instance_set.create(
        spot, cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    assert isinstance(created, EC2Instance) and created.availability_zone == "us-east-1a"
    proxy.respond(
        "DescribeSpotPriceHistory",
        history_page(
            [
                ("0.0300", "2030-01-01T00:00:00.000Z", "us-east-1a"),
                ("0.0400", "2030-01-03T00:00:00.000Z", "us-east-1a"),
                ("0.9900", "2030-01-03T00:00:00.000Z", "us-east-1b"),  # another zone
            ],
            next_token="page-2",
        ),
    )
    proxy.respond(
        "DescribeSpotPriceHistory",
        history_page(
            [
                ("0.0350", "2030-01-02T00:00:00.000Z", "us-east-1a"),
                ("0.0400", "2030-01-03T00:00:00.000Z", "us-east-1a"),  # repeated
            ]
        ),
    )
    [listed] = await instance_set.instances()
    assert [(p.start_time, round(p.price, 6)) for p in listed.price_history(spot)] == [
        (at("2030-01-03T00:00:00Z"), 0.05),
        (at("2030-01-02T00:00:00Z"), 0.045),
        (at("2030-01-01T00:00:00Z"), 0.04),
    ]
    requests = proxy.calls("DescribeSpotPriceHistory")
    assert len(requests) == 2 and requests[1].params["NextToken"] == "page-2"
    first = requests[0].params
    assert first["Filter.1.Name"] == "instance-type" and first["Filter.1.Value.1"] == "c5.large"
    assert first["Filter.2.Name"] == "product-description"
    assert first["Filter.2.Value.1"] == "Linux/UNIX"
    start = at(first["StartTime"])
    assert abs((datetime.now(UTC) - start).total_seconds() - 3 * 86400) < 60

    # Fresh prices are not asked for again within the update interval.
    await instance_set.instances()
    assert len(proxy.calls("DescribeSpotPriceHistory")) == 2


async def test_spot_prices_are_refreshed_after_the_interval(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, spot_price_update_interval=0.05)
    spot = itype("c5.large", preemptible=True)
    await instance_set.create(
        spot, cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    await instance_set.instances()
    await anyio.sleep(0.1)
    await instance_set.instances()
    assert len(proxy.calls("DescribeSpotPriceHistory")) == 2


async def test_a_failed_price_refresh_does_not_fail_the_listing(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    spot = itype("c5.large", preemptible=True)
    await instance_set.create(
        spot, cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    proxy.fail("DescribeSpotPriceHistory", "RequestLimitExceeded")
    [listed] = await instance_set.instances()
    assert listed.price_history(spot) == []
    assert "cannot refresh spot prices" in caplog.text


async def test_on_demand_price_history_is_the_type_price_since_launch(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, ebs_price=0.08)
    plain = itype("m5.large", price=0.096, added_scratch=90 << 30)  # + 0.01 per hour
    await instance_set.create(
        plain, cloudvm.ImageID(world.image_id), {}, cloudvm.InitCommand(""), None
    )
    [listed] = await instance_set.instances()
    [price] = listed.price_history(plain)
    assert price.price == pytest.approx(0.106)
    assert abs((datetime.now(UTC) - price.start_time).total_seconds()) < 60
    assert proxy.calls("DescribeSpotPriceHistory") == []
