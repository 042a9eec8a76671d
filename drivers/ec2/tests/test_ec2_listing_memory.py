"""A listing's instances keep only what they need: a dispatcher holds the
listing of thousands of instances for as long as it likes, so what each
instance keeps is paid thousands of times (measured with tracemalloc, not
timed)."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC

from cloudvm_ec2 import EC2Instance
from ec2_support import MakeSet, World, itype

from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG

COUNT = 200
# What one instance's id, address, tags (with its unique secret), type,
# zone, subnet, state and launch time need, with room to spare; an
# instance that keeps its own copy of every shared string and botocore's
# tzinfo object per timestamp keeps about 1.4 KB.
MAX_BYTES_PER_INSTANCE = 900


async def test_listed_instances_keep_under_900_bytes_each(make_set: MakeSet, world: World) -> None:
    instance_set = await make_set(set_id="memory-set")
    reservation = world.ec2.run_instances(
        ImageId=world.image_id,
        InstanceType="m5.large",
        MinCount=COUNT,
        MaxCount=COUNT,
        SubnetId=world.subnet_ids[0],
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": SET_ID_TAG, "Value": "memory-set"},
                    {"Key": SECRET_TAG, "Value": "s" * 43},
                    {"Key": "role", "Value": "worker"},
                ],
            }
        ],
    )
    launched = reservation["Instances"][0]["LaunchTime"]
    await instance_set.instances()  # every cache warm: only the listing is counted
    gc.collect()
    tracemalloc.start()
    try:
        listed = await instance_set.instances()
        gc.collect()
        holding = tracemalloc.get_traced_memory()[0]
        first = listed[0]
        del listed
        gc.collect()
        released = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (holding - released) / COUNT < MAX_BYTES_PER_INSTANCE
    # What is kept is still all there.
    assert isinstance(first, EC2Instance)
    assert first.tags == {"role": "worker"}
    assert first.provider_type == "m5.large"
    assert first.subnet_id == world.subnet_ids[0]
    assert first.availability_zone == "us-east-1a"
    assert first.state == "running"
    assert first.address.startswith("10.0.1.")
    [price] = first.price_history(itype())
    assert price.start_time == launched and price.start_time.tzinfo is UTC
