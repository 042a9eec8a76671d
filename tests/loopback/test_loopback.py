"""The loopback cloud, end to end."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import prometheus_client
import pytest

import cloudvm
from cloudvm.testing import RedirectedTarget

from ..support import processes_mentioning, wait_until
from .conftest import SMALL, booted, new_set

IMAGE = cloudvm.ImageID("local")


async def create(
    iset: cloudvm.InstanceSet,
    key: asyncssh.SSHKey | None,
    tags: dict[str, str] | None = None,
    init: str = "",
) -> cloudvm.Instance:
    return await iset.create(
        SMALL, IMAGE, tags or {}, cloudvm.InitCommand(init),
        key.convert_to_public() if key else None,
    )  # fmt: skip


async def test_whole_lifecycle(
    iset: cloudvm.InstanceSet, client_key: asyncssh.SSHKey, state_dir: Path
) -> None:
    tags = {"role": "worker", "Name": "web 1 ✓"}
    inst = await create(iset, client_key, tags, init="echo booted > marker")
    assert isinstance(inst, cloudvm.Instance)
    assert inst.tags == tags
    assert inst.address == ""  # booting
    assert inst.provider_type == "loopback.small"
    assert [i.id for i in await iset.instances(tags)] == [inst.id]  # listed at once

    inst = await booted(iset, inst.id)
    assert inst.address.startswith("127.0.0.1:")
    async with cloudvm.SSHExecutor(inst, signers=[client_key]) as ex:
        out, err = await ex.execute(
            'cat marker; echo "$X" >&2; cat; exit 0', stdin=b"in", env={"X": "y"}
        )
        assert (out, err) == (b"booted\nin", b"y\n")
        with pytest.raises(cloudvm.ExecuteError) as info:
            await ex.execute("exit 7")
        assert info.value.exit_status == 7

    await inst.set_tags({"role": "leader"})
    assert inst.tags == {"role": "leader"}
    assert await iset.instances({"role": "worker"}) == []
    (listed,) = await iset.instances({"role": "leader"})
    assert listed.tags == {"role": "leader"}
    assert listed.price_history(SMALL)[0].price == SMALL.price

    await inst.destroy()
    assert await iset.instances() == []
    # the instance is gone; the fork server, with nothing left to serve, exits
    await wait_until(lambda: not processes_mentioning(str(state_dir)), timeout=10)
    await inst.destroy()  # destroying what is gone is not an error


async def test_host_key_is_proven_through_the_metadata_tunnel(
    iset: cloudvm.InstanceSet, client_key: asyncssh.SSHKey
) -> None:
    inst = await booted(iset, (await create(iset, client_key)).id)
    async with cloudvm.SSHExecutor(inst, signers=[client_key]) as ex:
        await ex.execute("true")
        conn = ex._live.conn if ex._live else None
        assert conn is not None
        await inst.verify_host_key(conn.get_server_host_key(), conn)  # type: ignore[arg-type]
        with pytest.raises(NotImplementedError):
            await inst.verify_host_key(conn.get_server_host_key(), None)  # type: ignore[arg-type]
    await inst.destroy()


async def test_another_instance_cannot_pass_as_this_one(
    iset: cloudvm.InstanceSet, client_key: asyncssh.SSHKey, state_dir: Path
) -> None:
    a = await create(iset, client_key)
    b = await booted(iset, (await create(iset, client_key)).id)
    target = RedirectedTarget(a, b.address)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError, match="another instance"):
            await ex.execute("touch ran-here")
    assert not any(p.name == "ran-here" for p in state_dir.glob("instances/*/work/*"))  # noqa: ASYNC240
    for inst in (a, b):
        await inst.destroy()


async def test_instances_outlive_the_set_and_other_sets_see_them(
    state_dir: Path, client_key: asyncssh.SSHKey
) -> None:
    async with await new_set(state_dir, "set-a") as first:
        inst = await create(first, client_key, {"k": "v"})
    # the set stopped; its instance keeps running and a new set finds it
    async with (
        await new_set(state_dir, "set-a") as again,
        await new_set(state_dir, "set-b") as other,
    ):
        (found,) = await again.instances()
        assert (found.id, found.tags) == (inst.id, {"k": "v"})
        found = await booted(again, inst.id)
        assert await other.instances() == []  # a foreign set never sees it
        await create(other, None)
        assert [i.id for i in await again.instances()] == [inst.id]
        for i in [*await again.instances(), *await other.instances()]:
            await i.destroy()


async def test_another_process_lists_and_destroys(
    iset: cloudvm.InstanceSet, state_dir: Path
) -> None:
    inst = await create(iset, None, {"via": "process"})
    script = f"""
import asyncio, json, logging, cloudvm
async def main():
    d = cloudvm.load_driver("loopback")
    async with await d.instance_set({{"state_dir": {str(state_dir)!r}}}, "set-a", {{}},
                                    logging.getLogger()) as s:
        found = await s.instances({{"via": "process"}})
        print(json.dumps([[i.id, i.tags] for i in found]))
        for i in found:
            await i.destroy()
asyncio.run(main())
"""
    result = await anyio.run_process([sys.executable, "-c", script], check=True)
    assert json.loads(result.stdout) == [[inst.id, {"via": "process"}]]
    assert await iset.instances() == []


async def test_quota(state_dir: Path) -> None:
    async with await new_set(state_dir, max_instances=2) as iset:
        first = await create(iset, None)
        second = await create(iset, None)
        with pytest.raises(cloudvm.QuotaError, match="max_instances=2"):
            await create(iset, None)
        await first.destroy()
        third = await create(iset, None)
        for inst in (second, third):
            await inst.destroy()


async def test_boot_delay_keeps_the_address_empty(state_dir: Path) -> None:
    async with await new_set(state_dir, boot_delay=1.0) as iset:
        inst = await create(iset, None)
        (listed,) = await iset.instances()
        assert listed.address == ""
        assert (await booted(iset, inst.id)).address
        await inst.destroy()


@pytest.mark.parametrize(
    ("tags", "init", "message"),
    [
        ({"": "x"}, "", "non-empty"),
        ({"cloudvm-secret": "x"}, "", "cloudvm-"),
        ({}, "x" * 1024, "under 1 KiB"),
    ],
)
async def test_bad_input_is_refused_before_anything_starts(
    iset: cloudvm.InstanceSet, state_dir: Path, tags: dict[str, str], init: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await create(iset, None, tags, init)
    assert not (state_dir / "instances").exists() or not any((state_dir / "instances").iterdir())


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"max_instance": 3}, "max_instance"),
        ({"max_instances": "lots"}, "max_instances"),
        ({"boot_delay": -1}, "boot_delay"),
    ],
)
async def test_bad_config_names_the_field(
    state_dir: Path, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(cloudvm.ConfigError, match=field):
        await new_set(state_dir, **config)


async def test_wrong_types_are_refused(iset: cloudvm.InstanceSet) -> None:
    with pytest.raises(TypeError, match="itype"):
        await iset.create("small", IMAGE, {}, cloudvm.InitCommand(""), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="public_key"):
        await iset.create(SMALL, IMAGE, {}, cloudvm.InitCommand(""), "ssh-ed25519 AAAA")  # type: ignore[arg-type]


async def test_cancelled_create_leaves_only_tagged_instances(
    iset: cloudvm.InstanceSet, state_dir: Path
) -> None:
    for delay in (0, 0.001, 0.01, 0.05):
        with anyio.move_on_after(delay):
            await create(iset, None, {"attempt": str(delay)})
    listed = await iset.instances()
    on_disk = {p.name for p in (state_dir / "instances").iterdir()}
    assert {i.id for i in listed} == on_disk  # nothing half-made, nothing untagged
    assert all("attempt" in i.tags for i in listed)
    for inst in listed:
        await inst.destroy()


async def test_concurrent_creates_respect_the_quota(state_dir: Path) -> None:
    made: list[cloudvm.Instance] = []
    refused: list[Exception] = []

    async def one(iset: cloudvm.InstanceSet) -> None:
        try:
            made.append(await create(iset, None))
        except cloudvm.QuotaError as exc:
            refused.append(exc)

    async with await new_set(state_dir, max_instances=3) as iset:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one, iset)
        assert (len(made), len(refused)) == (3, 3)
        for inst in made:
            await inst.destroy()


async def test_secrets_are_never_logged(
    iset: cloudvm.InstanceSet,
    client_key: asyncssh.SSHKey,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    init = "echo init-secret-value > /dev/null"
    inst = await booted(iset, (await create(iset, client_key, {"a": "b"}, init=init)).id)
    async with cloudvm.SSHExecutor(inst, signers=[client_key]) as ex:
        await ex.execute("true")
    record = json.loads((state_dir / "instances" / inst.id / "record.json").read_text())
    await inst.set_tags({"a": "c"})
    await inst.destroy()
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert inst.id in logged  # the log does talk about the instance
    assert record["secret"] not in logged
    assert "init-secret-value" not in logged
    assert record["secret"] not in repr(inst)


async def test_metrics_count_calls(state_dir: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    driver = cloudvm.load_driver("loopback")
    async with await driver.instance_set(
        {"state_dir": str(state_dir)}, cloudvm.InstanceSetID("m"), {},
        logging.getLogger(), registry,
    ) as iset:  # fmt: skip
        inst = await create(iset, None)
        await iset.instances()
        await inst.destroy()
    sample = registry.get_sample_value
    for operation in ("create", "instances", "destroy"):
        labels = {"driver": "loopback", "operation": operation, "outcome": "ok"}
        assert sample("cloudvm_api_calls_total", labels) == 1, operation


async def test_an_orphaned_instance_process_exits_by_itself(
    iset: cloudvm.InstanceSet, state_dir: Path
) -> None:
    inst = await booted(iset, (await create(iset, None)).id)
    assert processes_mentioning(str(state_dir))
    # Someone deletes the cloud's state under the running instance.
    await anyio.run_process(["rm", "-rf", str(state_dir / "instances" / inst.id)])
    await wait_until(lambda: not processes_mentioning(str(state_dir)), timeout=10)
