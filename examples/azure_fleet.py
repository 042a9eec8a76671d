"""A fleet on Microsoft Azure: create, wait for boot, prove and run, destroy.

Before you run it:

- ``pip install aiocloudvm-azure pyyaml``;
- credentials: ``az login``, a managed identity, ``AZURE_*`` environment
  variables, or a service principal in the config;
- edit ``examples/config/azure.yaml``, which documents every key: the
  subscription, the resource group, the region, and a virtual network and
  subnet whose security group lets this machine reach port 22.

Then ``python examples/azure_fleet.py [--count 2] [--type Standard_B2s] [--image IMAGE]``.
The default image is Debian 12 (``publisher:offer:sku:version``).

It creates ``--count`` VMs, each with its network interface and OS disk,
tagged ``example=fleet`` and ``run=<random>`` (and with the set id
``example-fleet``); destroying a VM deletes its NIC and disk too. Each costs
its price for the minutes it lives (Standard_B2s: about $0.042 an hour in
westeurope). cloudvm proves each host before running anything: the driver
stores a random secret in the VM's user data, and the executor reads it back
through the SSH connection from the VM's own metadata service (IMDS), which
no other machine can answer.

If the process dies before it destroys them, run
``python examples/cleanup_after_crash.py --driver azure --config
examples/config/azure.yaml --set-id example-fleet --destroy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fleet

import cloudvm

#: Debian 12 from the marketplace, as publisher:offer:sku:version.
IMAGE = "Debian:debian-12:12:latest"


#: The default type (Standard_B2s: 2 vCPUs, 4 GiB, in westeurope), as a dispatcher knows it.
STANDARD_B2S = fleet.instance_type("Standard_B2s", vcpus=2, ram=4 * 2**30, price=0.042)


async def main(
    argv: Sequence[str] | None = None, *, driver: cloudvm.Driver | None = None
) -> dict[cloudvm.InstanceID, str]:
    """Run the fleet with the command line ``argv`` (None: ``sys.argv``) on
    ``driver`` (None: the installed ``azure`` driver); return each output."""
    return await fleet.main("azure", __doc__, argv, driver, itype=STANDARD_B2S, image=IMAGE)


if __name__ == "__main__":
    asyncio.run(main())
