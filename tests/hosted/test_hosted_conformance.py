"""The whole conformance kit, SSH steps included, through HostedDriver: every
command runs on the hosts, none on the wrapped driver's own servers."""

from __future__ import annotations

import asyncssh

import cloudvm
from cloudvm import Instance
from cloudvm.testing import FakeCloud, HostBoot, HostedDriver
from cloudvm.testing.conformance import ConformanceConfig, run_conformance

from .conftest import IMAGE, SMALL, fake_boot


async def test_the_conformance_kit_passes_on_hosts(cloud: FakeCloud) -> None:
    commands: list[str] = []

    async def boot(instance: Instance) -> HostBoot:
        return await fake_boot(cloud, instance)

    async with HostedDriver(cloud.driver, boot) as hosted:
        config = ConformanceConfig(
            driver=hosted,
            image_id=IMAGE,
            instance_type=SMALL,
            ssh_key=asyncssh.generate_private_key("ssh-ed25519"),
            extra_command="echo on-the-host",
            boot_timeout=10,
            destroy_timeout=10,
            settle_timeout=5,
            poll_interval=0.02,
            cancel_delays=(0.0, 0.001, 0.01),
            ssh_connect_timeout=10,
        )

        def note_commands(_: object) -> None:
            for server in hosted.hosts.values():
                commands.extend(c for c in server.commands if c not in commands)

        report = await run_conformance(config, progress=note_commands)
        assert report.ok, str(report)
        assert hosted.hosts == {}  # the kit destroyed every instance, so every host halted
    assert "echo on-the-host" in commands
    assert cloud.instance_ids() == []
    assert isinstance(hosted, cloudvm.Driver)
