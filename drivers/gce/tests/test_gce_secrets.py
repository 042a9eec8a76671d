"""Secrets (the instance secret, the init command) never reach a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE

import cloudvm
from cloudvm import InitCommand
from cloudvm.driverkit import SECRET_TAG


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.__dict__))


@pytest.fixture
def google_logs() -> Iterator[_Collect]:
    """The SDK's own loggers (``google.*`` does not propagate to the root)."""
    handler = _Collect()
    logger = logging.getLogger("google")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_secret_and_init_command_are_never_logged(
    gce_set: cloudvm.InstanceSet,
    fake_gce: FakeCompute,
    caplog: pytest.LogCaptureFixture,
    google_logs: _Collect,
) -> None:
    caplog.set_level(logging.DEBUG)
    init = "echo INIT-SECRET-7f3a > /tmp/x"
    fake_gce.drop_response("insert")  # the retry path logs too
    fake_gce.exhausted_zones.add("us-central1-a")  # and the failover path
    inst = await gce_set.create(ITYPE, IMAGE, {"k": "v"}, InitCommand(init), None)
    secret = fake_gce.secret_of(inst.id, SECRET_TAG)
    assert secret
    await gce_set.instances()
    await inst.set_tags({"k": "w"})
    await inst.destroy()
    lines = [r.getMessage() + repr(r.__dict__) for r in caplog.records] + google_logs.lines
    assert lines, "expected some log records"
    assert not [line for line in lines if secret in line]
    assert not [line for line in lines if "INIT-SECRET-7f3a" in line]
    assert secret not in repr(inst)
