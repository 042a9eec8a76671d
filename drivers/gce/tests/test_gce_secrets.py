"""Secrets (the instance secret, the init command) never reach a log record,
at DEBUG on every logger, though google-cloud-compute's REST transports log
request and response payloads at DEBUG."""

from __future__ import annotations

from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE

import cloudvm
from cloudvm import InitCommand
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import capture_every_log

INIT = "echo INIT-SECRET-7f3a > /tmp/x"


async def test_secret_and_init_command_are_never_logged(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    with capture_every_log() as logs:
        fake_gce.drop_response("insert")  # the retry path logs too
        fake_gce.exhausted_zones.add("us-central1-a")  # and the failover path
        inst = await gce_set.create(ITYPE, IMAGE, {"k": "v"}, InitCommand(INIT), None)
        secret = fake_gce.secret_of(inst.id, SECRET_TAG)
        assert secret
        await gce_set.instances()
        await inst.set_tags({"k": "w"})
        await inst.destroy()
    # The SDK logged its payloads too (redacted): the test sees what a user would.
    assert any(r.name.startswith("google.cloud.compute_v1") for r in logs.records)
    assert logs.containing(secret) == []
    assert logs.containing("INIT-SECRET-7f3a") == []
    assert secret not in repr(inst)
