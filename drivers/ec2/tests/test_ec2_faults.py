"""Error paths through the fault proxy in front of moto: EC2's real error XML
reaches the driver's real botocore parse path."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import prometheus_client
import pytest
from cloudvm_ec2 import QUOTA_CODES, THROTTLE_CODES, EC2APIError, EC2Instance
from ec2_proxy import EC2FaultProxy
from ec2_support import MakeSet, World, itype

import cloudvm
from cloudvm.driverkit import SET_ID_TAG

NO_INIT = cloudvm.InitCommand("")


def seconds_until(when: datetime) -> float:
    return (when - datetime.now(UTC)).total_seconds()


async def create(instance_set: cloudvm.InstanceSet, world: World, **kw: object) -> cloudvm.Instance:
    return await instance_set.create(
        itype(**kw),  # type: ignore[arg-type]
        cloudvm.ImageID(world.image_id),
        {},
        NO_INIT,
        None,
    )


def on_subnet(subnet: str) -> Callable[[Mapping[str, str]], bool]:
    return lambda params: params.get("NetworkInterface.1.SubnetId") == subnet


@pytest.mark.parametrize("code", sorted(THROTTLE_CODES))
async def test_every_throttle_code_is_a_rate_limit_error(
    code: str, make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.fail("RunInstances", code)
    proxy.fail("DescribeInstances", code)
    with pytest.raises(cloudvm.RateLimitError) as created:
        await create(instance_set, world)
    with pytest.raises(cloudvm.RateLimitError) as listed:
        await instance_set.instances()
    for exc in (created.value, listed.value):
        assert exc.code == code
        assert 0.5 < seconds_until(exc.earliest_retry) <= 1.0
    # SDK retries are off: each call reached EC2 exactly once.
    assert proxy.actions() == ["RunInstances", "DescribeInstances"]


async def test_a_429_without_a_known_code_is_a_rate_limit_error(
    make_set: MakeSet, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.fail("DescribeInstances", "SomethingNew", status=429)
    with pytest.raises(cloudvm.RateLimitError):
        await instance_set.instances()


@pytest.mark.parametrize("code", sorted(QUOTA_CODES))
async def test_every_quota_code_is_a_quota_error(
    code: str, make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.fail("RunInstances", code, "You have requested more than your limit")
    with pytest.raises(cloudvm.QuotaError) as caught:
        await create(instance_set, world)
    assert caught.value.code == code
    assert not isinstance(caught.value, cloudvm.CapacityError)


@pytest.mark.parametrize(
    ("code", "message", "type_specific", "group_specific"),
    [
        ("VcpuLimitExceeded", "You have requested more vCPU capacity", False, True),
        (
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity",
            True,
            False,
        ),
        ("UnfulfillableCapacity", "Unable to fulfill capacity", True, False),
        ("ReservationCapacityExceeded", "The reservation is full", True, False),
        (
            "Unsupported",
            "Your requested instance type (m5.large) is not supported in your requested "
            "Availability Zone (us-east-1a).",
            True,
            False,
        ),
    ],
)
async def test_capacity_codes_are_capacity_errors_with_flags(
    code: str,
    message: str,
    type_specific: bool,
    group_specific: bool,
    make_set: MakeSet,
    world: World,
    proxy: EC2FaultProxy,
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.fail("RunInstances", code, message)
    with pytest.raises(cloudvm.CapacityError) as caught:
        await create(instance_set, world)
    assert caught.value.code == code
    assert caught.value.instance_type_specific is type_specific
    assert caught.value.quota_group_specific is group_specific


async def test_unknown_errors_keep_code_message_and_request_id(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.fail("RunInstances", "InvalidAMIID.NotFound", "The image id '[ami-1]' does not exist")
    with pytest.raises(EC2APIError) as caught:
        await create(instance_set, world)
    request_id = caught.value.request_id
    assert request_id and request_id in str(caught.value)
    assert caught.value.code == "InvalidAMIID.NotFound"
    assert caught.value.operation == "RunInstances"
    assert caught.value.status == 400
    assert "The image id '[ami-1]' does not exist" in str(caught.value)
    assert not isinstance(
        caught.value, (cloudvm.RateLimitError, cloudvm.QuotaError, cloudvm.CapacityError)
    )


async def test_backoff_grows_per_call_kind_and_resets_on_success(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    expected = [1.0, 2.5, 4.75, 8.125, 13.1875, 20.78125, 32.171875, 49.2578125, 60.0, 60.0]
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=len(expected))
    for delay in expected:
        with pytest.raises(cloudvm.RateLimitError) as caught:
            await instance_set.instances()
        assert seconds_until(caught.value.earliest_retry) == pytest.approx(delay, abs=0.5)
    # Creates have their own backoff: the listing's long one does not apply.
    proxy.fail("RunInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError) as caught:
        await create(instance_set, world)
    assert seconds_until(caught.value.earliest_retry) == pytest.approx(1.0, abs=0.5)
    # A successful listing resets the listing's backoff.
    await instance_set.instances()
    proxy.fail("DescribeInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError) as caught:
        await instance_set.instances()
    assert seconds_until(caught.value.earliest_retry) == pytest.approx(1.0, abs=0.5)


async def test_subnet_failover_order_and_memory(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    a, b, c = world.subnet_ids
    instance_set = await make_set(endpoint=proxy.url, subnet_ids=[a, b, c])
    proxy.fail(
        "RunInstances",
        "InsufficientFreeAddressesInSubnet",
        "There are not enough free addresses in subnet",
        times=None,
        when=on_subnet(a),
    )
    proxy.fail(
        "RunInstances",
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient m5.large capacity",
        when=on_subnet(b),
    )
    first = await create(instance_set, world)
    assert isinstance(first, EC2Instance) and first.subnet_id == c
    tried = [r.params["NetworkInterface.1.SubnetId"] for r in proxy.calls("RunInstances")]
    assert tried == [a, b, c]
    # Each subnet's attempt had its own ClientToken, from one nonce.
    tokens = [r.params["ClientToken"] for r in proxy.calls("RunInstances")]
    assert len(set(tokens)) == 3
    assert len({t.rsplit("-", 1)[0] for t in tokens}) == 1

    # The next create starts where the last one ended.
    second = await create(instance_set, world)
    assert isinstance(second, EC2Instance) and second.subnet_id == c
    assert proxy.calls("RunInstances")[-1].params["NetworkInterface.1.SubnetId"] == c


async def test_all_subnets_failing_raises_the_last_capacity_error(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    a, b, c = world.subnet_ids
    instance_set = await make_set(endpoint=proxy.url, subnet_ids=[a, b, c])
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", "none in a", when=on_subnet(a))
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", "none in b", when=on_subnet(b))
    proxy.fail("RunInstances", "InvalidSubnetID.NotFound", "no such subnet c", when=on_subnet(c))
    with pytest.raises(cloudvm.CapacityError, match="none in b"):
        await create(instance_set, world)
    assert len(proxy.calls("RunInstances")) == 3
    assert world.ec2.describe_instances()["Reservations"] == []


async def test_all_subnets_failing_without_capacity_errors_raises_the_last(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    a, b = world.subnet_ids[:2]
    instance_set = await make_set(endpoint=proxy.url, subnet_ids=[a, b])
    proxy.fail("RunInstances", "InvalidSubnetID.NotFound", "no such subnet a", when=on_subnet(a))
    proxy.fail("RunInstances", "InvalidSubnetID.NotFound", "no such subnet b", when=on_subnet(b))
    with pytest.raises(EC2APIError, match="no such subnet b"):
        await create(instance_set, world)


async def test_errors_that_are_not_subnet_specific_stop_the_failover(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, subnet_ids=world.subnet_ids)
    proxy.fail("RunInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await create(instance_set, world)
    proxy.fail("RunInstances", "InstanceLimitExceeded")
    with pytest.raises(cloudvm.QuotaError):
        await create(instance_set, world)
    assert len(proxy.calls("RunInstances")) == 2


async def test_lost_run_instances_response_is_retried_into_one_instance(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.lose_response("RunInstances", times=2)
    created = await create(instance_set, world)

    calls = proxy.calls("RunInstances")
    assert [c.answer for c in calls] == ["lost", "lost", "replayed"]
    assert len({c.params["ClientToken"] for c in calls}) == 1
    reservations = world.ec2.describe_instances()["Reservations"]
    assert [i["InstanceId"] for r in reservations for i in r["Instances"]] == [created.id]
    assert [i.id for i in await instance_set.instances()] == [created.id]


async def test_lost_responses_beyond_the_retries_leave_a_findable_instance(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url, lost_response_retries=1)
    proxy.lose_response("RunInstances", times=2)
    with pytest.raises(EC2APIError, match="no answer") as caught:
        await create(instance_set, world)
    assert caught.value.code is None
    # The instance exists, tagged at launch, so a listing finds it.
    [found] = await instance_set.instances()
    assert found.id.startswith("i-")


async def test_proxy_refuses_a_reused_client_token_with_other_parameters(
    world: World, proxy: EC2FaultProxy
) -> None:
    # The proxy is a test double: check that it does what EC2 does.
    from ec2_support import boto_client

    ec2 = boto_client(proxy.url)
    first = ec2.run_instances(ImageId=world.image_id, MinCount=1, MaxCount=1, ClientToken="t")
    again = ec2.run_instances(ImageId=world.image_id, MinCount=1, MaxCount=1, ClientToken="t")
    assert first["Instances"][0]["InstanceId"] == again["Instances"][0]["InstanceId"]
    with pytest.raises(Exception, match="IdempotentParameterMismatch"):
        ec2.run_instances(
            ImageId=world.image_id, MinCount=1, MaxCount=1, ClientToken="t", InstanceType="c5.large"
        )


async def test_set_tags_and_destroy_map_errors(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    created = await create(instance_set, world)
    proxy.fail("CreateTags", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await created.set_tags({"a": "b"})
    proxy.fail("DescribeTags", "Throttling")
    with pytest.raises(cloudvm.RateLimitError):
        await created.set_tags({"a": "b"})
    proxy.fail("TerminateInstances", "UnauthorizedOperation", "You are not authorized")
    with pytest.raises(EC2APIError, match="UnauthorizedOperation") as caught:
        await created.destroy()
    assert caught.value.request_id
    proxy.fail("TerminateInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await created.destroy()
    # Already gone is not an error.
    proxy.fail("TerminateInstances", "InvalidInstanceID.NotFound", "does not exist")
    await created.destroy()


async def test_an_empty_next_token_ends_the_listing(
    make_set: MakeSet, proxy: EC2FaultProxy
) -> None:
    instance_set = await make_set(endpoint=proxy.url)
    proxy.respond(
        "DescribeInstances",
        '<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        "<requestId>r-1</requestId><reservationSet><item><reservationId>r-1</reservationId>"
        "<instancesSet><item><instanceId>i-0123456789abcdef0</instanceId>"
        "<instanceType>m5.large</instanceType>"
        "<instanceState><code>16</code><name>running</name></instanceState>"
        "<privateIpAddress>10.0.1.9</privateIpAddress>"
        f"<tagSet><item><key>{SET_ID_TAG}</key><value>test-set</value></item></tagSet>"
        "</item></instancesSet></item></reservationSet>"
        "<nextToken></nextToken></DescribeInstancesResponse>",
    )
    [found] = await instance_set.instances()
    assert (found.id, found.address) == ("i-0123456789abcdef0", "10.0.1.9")
    assert len(proxy.calls("DescribeInstances")) == 1


async def test_metrics_count_calls_and_starts_per_subnet(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    registry = prometheus_client.CollectorRegistry()
    a, b = world.subnet_ids[:2]
    instance_set = await make_set(endpoint=proxy.url, subnet_ids=[a, b], registry=registry)
    proxy.fail("RunInstances", "InsufficientInstanceCapacity", "none", when=on_subnet(a))
    await create(instance_set, world)
    await create(instance_set, world)
    proxy.fail("DescribeInstances", "RequestLimitExceeded")
    with pytest.raises(cloudvm.RateLimitError):
        await instance_set.instances()
    await instance_set.instances()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert (
        sample("cloudvm_api_calls_total", driver="ec2", operation="RunInstances", outcome="ok") == 2
    )
    assert (
        sample(
            "cloudvm_api_calls_total",
            driver="ec2",
            operation="RunInstances",
            outcome="CapacityError",
        )
        == 1
    )
    assert (
        sample(
            "cloudvm_api_calls_total",
            driver="ec2",
            operation="DescribeInstances",
            outcome="RateLimitError",
        )
        == 1
    )
    starts = "cloudvm_ec2_instance_starts_total"
    assert sample(starts, instance_set="test-set", subnet_id=a, success="false") == 1
    assert sample(starts, instance_set="test-set", subnet_id=b, success="true") == 2
    per_subnet = "cloudvm_ec2_instances"
    assert sample(per_subnet, instance_set="test-set", subnet_id=b) == 2
    for instance in await instance_set.instances():
        await instance.destroy()
    await instance_set.instances()
    assert sample(per_subnet, instance_set="test-set", subnet_id=b) == 0


async def test_missing_credentials_are_reported_not_retried(
    make_set: MakeSet, world: World, proxy: EC2FaultProxy
) -> None:
    # No static credentials, and the standard chain finds none here (the
    # environment is clean and instance metadata is off).
    instance_set = await make_set(endpoint=proxy.url, access_key_id=None, secret_access_key=None)
    started = time.monotonic()
    with pytest.raises(EC2APIError, match="credentials") as caught:
        await create(instance_set, world)
    assert caught.value.code is None
    assert time.monotonic() - started < 0.4  # not repeated like a lost response
    assert proxy.actions() == []
