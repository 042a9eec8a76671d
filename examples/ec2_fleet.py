"""A fleet on Amazon EC2: create, wait for boot, prove and run, destroy.

Before you run it:

- ``pip install aiocloudvm-ec2 pyyaml``;
- AWS credentials where AWS's standard chain finds them (``aws configure``,
  ``AWS_PROFILE``, environment variables, an instance role);
- edit ``examples/config/ec2.yaml``, which documents every key: the region,
  a subnet this machine reaches on port 22 (or ``address: public``) and a
  security group that lets it in.

Then ``python examples/ec2_fleet.py [--count 2] [--type t3.micro] [--image AMI]``.
The default image is AWS's public Debian 12 parameter (log in as ``admin``,
the config's ``admin_username``).

It creates ``--count`` instances tagged ``example=fleet`` and ``run=<random>``
(and ``cloudvm-instance-set=example-fleet``), plus one EC2 key pair holding
this run's public key, which stays for later runs. Each instance costs its
on-demand price for the minutes it lives (t3.micro: about $0.0104 an hour in
us-east-1). cloudvm proves each host before running anything: the driver
tags the instance with a random secret, and the executor reads it back
through the SSH connection from the instance's own metadata service
(IMDSv2), which no other machine can answer.

If the process dies before it destroys them, run
``python examples/cleanup_after_crash.py --driver ec2 --config
examples/config/ec2.yaml --set-id example-fleet --destroy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fleet

import cloudvm

#: Debian 12 for x86-64, resolved by EC2 from AWS's public SSM parameter.
IMAGE = "resolve:ssm:/aws/service/debian/release/12/latest/amd64"


#: The default type (t3.micro: 2 vCPUs, 1 GiB, on demand in us-east-1), as a dispatcher knows it.
T3_MICRO = fleet.instance_type("t3.micro", vcpus=2, ram=2**30, price=0.0104)


async def main(
    argv: Sequence[str] | None = None, *, driver: cloudvm.Driver | None = None
) -> dict[cloudvm.InstanceID, str]:
    """Run the fleet with the command line ``argv`` (None: ``sys.argv``) on
    ``driver`` (None: the installed ``ec2`` driver); return each output."""
    return await fleet.main("ec2", __doc__, argv, driver, itype=T3_MICRO, image=IMAGE)


if __name__ == "__main__":
    asyncio.run(main())
