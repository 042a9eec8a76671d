"""A fleet on Google Compute Engine: create, wait for boot, prove and run, destroy.

Before you run it:

- ``pip install aiocloudvm-gce pyyaml``;
- credentials: ``gcloud auth application-default login``, or a
  service-account key file named by the config's ``credentials``;
- edit ``examples/config/gce.yaml``, which documents every key: the project,
  the zones, and a network whose firewall lets this machine reach port 22
  (or ``external_ip: true`` with ``address: external``).

Then ``python examples/gce_fleet.py [--count 2] [--type e2-small] [--image IMAGE]``.
The default image is Google's Debian 12 family.

It creates ``--count`` instances labelled ``example=fleet`` and
``run=<random>`` (and with the set id ``example-fleet``), nothing else. Each
costs its price for the minutes it lives (e2-small: about $0.017 an hour in
us-central1). cloudvm proves each host before running anything: the driver
puts a random secret in the instance's metadata, and the executor reads it
back through the SSH connection from the instance's own metadata server,
which no other machine can answer.

If the process dies before it destroys them, run
``python examples/cleanup_after_crash.py --driver gce --config
examples/config/gce.yaml --set-id example-fleet --destroy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fleet

import cloudvm

#: Debian 12, the newest image of Google's family.
IMAGE = "projects/debian-cloud/global/images/family/debian-12"


#: The default type (e2-small: 2 shared vCPUs, 2 GiB, in us-central1), as a dispatcher knows it.
E2_SMALL = fleet.instance_type("e2-small", vcpus=2, ram=2 * 2**30, price=0.017)


async def main(
    argv: Sequence[str] | None = None, *, driver: cloudvm.Driver | None = None
) -> dict[cloudvm.InstanceID, str]:
    """Run the fleet with the command line ``argv`` (None: ``sys.argv``) on
    ``driver`` (None: the installed ``gce`` driver); return each output."""
    return await fleet.main("gce", __doc__, argv, driver, itype=E2_SMALL, image=IMAGE)


if __name__ == "__main__":
    asyncio.run(main())
