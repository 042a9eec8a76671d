"""Create an instance on the loopback cloud, run a command on it, destroy it."""

import asyncio
import logging
import tempfile

import anyio
import asyncssh

import cloudvm

SMALL = cloudvm.InstanceType(
    name="small",
    provider_type="loopback.small",
    vcpus=1,
    ram=512 * 2**20,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.0,
)


async def main() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    driver = cloudvm.load_driver("loopback")
    with tempfile.TemporaryDirectory() as state_dir:
        async with await driver.instance_set(
            {"state_dir": state_dir},
            cloudvm.InstanceSetID("first-program"),
            {"team": "docs"},
            logging.getLogger("first-program"),
        ) as instance_set:
            instance = await instance_set.create(
                SMALL,
                cloudvm.ImageID("local"),
                {"job": "42"},
                cloudvm.InitCommand("echo booted > marker"),
                key.convert_to_public(),
            )
            try:
                with anyio.fail_after(60):  # re-list until it has booted
                    while not instance.address:
                        await anyio.sleep(0.2)
                        (instance,) = await instance_set.instances({"job": "42"})
                async with cloudvm.SSHExecutor(instance, signers=[key]) as executor:
                    stdout, _ = await executor.execute("cat marker")  # host key proven first
                print(f"{instance} at {instance.address} says {stdout.decode().strip()!r}")
            finally:
                await instance.destroy()


if __name__ == "__main__":
    asyncio.run(main())
