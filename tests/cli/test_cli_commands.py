"""The ``cloudvm`` command, run as a subprocess against the loopback cloud."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cloud, cloudvm

TYPE = ["--type", "loopback.small", "--image", "local"]


async def create(cloud: Cloud, *extra: str) -> str:
    result = await cloudvm("create", *cloud.args(), *TYPE, *extra)
    assert result.code == 0, result.stderr
    return result.stdout.split()[0]


async def test_drivers_lists_the_installed_drivers() -> None:
    result = await cloudvm("drivers")
    assert result.code == 0
    assert {"fake", "loopback"} <= set(result.stdout.split())
    result = await cloudvm("drivers", "--json")
    assert {"fake", "loopback"} <= set(json.loads(result.stdout))


async def test_create_list_exec_destroy_round_trip(cloud: Cloud) -> None:
    result = await cloudvm(
        "create", *cloud.args(), *TYPE,
        "--tag", "role=worker", "--tag", "Name=web 1 ✓",
        "--public-key", f"{cloud.key}.pub", "--init-command", "echo booted > marker", "--wait",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    instance_id, address = result.stdout.split()
    assert address.startswith("127.0.0.1:")
    assert f"waiting for {instance_id} to boot" in result.stderr

    table = await cloudvm("list", *cloud.args())
    assert table.code == 0
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "TYPE", "ADDRESS", "TAGS"]
    assert row.startswith(instance_id) and "Name=web 1 ✓,role=worker" in row

    listed = json.loads(
        (await cloudvm("list", *cloud.args(), "--json", "--tag", "role=worker")).stdout
    )
    assert [(i["id"], i["tags"]) for i in listed] == [
        (instance_id, {"role": "worker", "Name": "web 1 ✓"})
    ]
    assert (
        json.loads((await cloudvm("list", *cloud.args(), "--json", "--tag", "role=x")).stdout) == []
    )

    run = await cloudvm(
        "exec", *cloud.args(), "--key", str(cloud.key), instance_id, "--",
        "cat marker; echo oops >&2; exit 7",
    )  # fmt: skip
    assert (run.code, run.stdout, run.stderr) == (7, "booted\n", "oops\n")
    run = await cloudvm("exec", *cloud.args(), "--key", str(cloud.key), instance_id, "echo", "hi")
    assert (run.code, run.stdout) == (0, "hi\n")

    gone = await cloudvm("destroy", *cloud.args(), instance_id)
    assert (gone.code, gone.stdout) == (0, f"destroyed {instance_id}\n")
    assert (await cloudvm("list", *cloud.args(), "--json")).stdout.strip() == "[]"


async def test_destroy_all_with_tag_asks_unless_yes(cloud: Cloud) -> None:
    first = await create(cloud, "--tag", "batch=7")
    second = await create(cloud, "--tag", "batch=7")
    other = await create(cloud, "--tag", "batch=8")
    refused = await cloudvm("destroy", *cloud.args(), "--all-with-tag", "batch=7")
    assert refused.code == 2 and "--yes" in refused.stderr
    assert len(cloud.instance_dirs()) == 3  # nothing destroyed

    done = await cloudvm("destroy", *cloud.args(), "--all-with-tag", "batch=7", "--yes")
    assert done.code == 0
    assert sorted(done.stdout.split()) == sorted(["destroyed", "destroyed", first, second])
    assert (await cloudvm("destroy", *cloud.args(), other)).code == 0


async def test_unknown_instance_is_a_failure(cloud: Cloud) -> None:
    result = await cloudvm("exec", *cloud.args(), "--key", str(cloud.key), "lb-nope", "true")
    assert result.code == 1
    assert "no instance lb-nope in set cloudvm-cli" in result.stderr
    result = await cloudvm("destroy", *cloud.args(), "lb-nope")
    assert result.code == 1 and "no instance lb-nope" in result.stderr


async def test_invalid_tag_is_a_usage_error(cloud: Cloud) -> None:
    result = await cloudvm("create", *cloud.args(), *TYPE, "--tag", "cloudvm-x=1")
    assert result.code == 2
    assert "invalid input" in result.stderr and "cloudvm-x" in result.stderr
    assert "Traceback" not in result.stderr
    assert cloud.instance_dirs() == []


async def test_quota_error_is_a_cloud_error(tmp_path: Path) -> None:
    config = tmp_path / "full.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "full"), "max_instances": 0}))
    result = await cloudvm("create", "--driver", "loopback", "--config", str(config), *TYPE)
    assert result.code == 3
    assert "QuotaError [InstanceLimitExceeded]" in result.stderr
    assert "may exist anyway" in result.stderr
    assert "Traceback" not in result.stderr


async def test_host_key_that_cannot_be_proven_exits_4(cloud: Cloud) -> None:
    instance_id = await create(cloud, "--public-key", f"{cloud.key}.pub", "--wait")
    try:
        # Make the cloud's record disagree with what the instance's metadata
        # service says, as if the address now led to another machine.
        record_file = cloud.state_dir / "instances" / instance_id / "record.json"
        record = json.loads(record_file.read_text())
        record["secret"] = "not-the-instance-secret"
        record_file.write_text(json.dumps(record))
        result = await cloudvm("exec", *cloud.args(), "--key", str(cloud.key), instance_id, "true")
        assert result.code == 4, result.stderr
        assert "host key" in result.stderr and "Traceback" not in result.stderr
    finally:
        assert (await cloudvm("destroy", *cloud.args(), instance_id)).code == 0
