"""The conformance kit, SSH steps included, against the GCE driver on the
local Compute API: each instance the driver creates runs on an in-process
host (:class:`cloudvm.testing.HostedDriver`) that runs its ``startup-script``
metadata item once at boot and answers the metadata address with GCE's
metadata protocol, serving the instance's metadata as the API holds it."""

from __future__ import annotations

from cloudvm_gce import DRIVER
from gce_fake_api import FakeCompute, GCEMetadataService
from gce_helpers import IMAGE, ITYPE, gce_config

from cloudvm import Instance
from cloudvm.testing import HostBoot, HostedDriver
from cloudvm.testing.conformance import local_test_config, run_conformance


def gce_boot(fake: FakeCompute) -> HostedDriver:
    """The ``gce`` driver with a host behind every instance it creates."""

    async def boot(instance: Instance) -> HostBoot:
        script = fake.secret_of(instance.id, "startup-script") or ""
        return HostBoot(init_script=script, metadata=GCEMetadataService(fake, instance.id))

    return HostedDriver(DRIVER, boot)


async def test_conformance_kit_passes(fake_gce: FakeCompute) -> None:
    async with gce_boot(fake_gce) as driver:
        config = local_test_config(driver, IMAGE, ITYPE, config=gce_config(fake_gce))
        report = await run_conformance(config)
    assert report.ok, str(report)
    # It really was the Compute API underneath, and nothing is left there.
    assert {"insert", "list", "setLabels", "delete"} <= {r.method for r in fake_gce.requests}
    assert fake_gce.instances == {}
