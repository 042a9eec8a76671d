"""The loopback driver trusts nothing it reads from its state dir."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import anyio
import pytest

import cloudvm

from .conftest import new_set

VICTIM_ID = "../../victim"


def plant_record(state_dir: Path, name: str, record_id: str, set_id: str = "set-a") -> Path:
    """An instance directory written by someone other than create."""
    planted = state_dir / "instances" / name
    planted.mkdir(parents=True)
    (planted / "record.json").write_text(
        json.dumps({
            "id": record_id, "set_id": set_id, "provider_type": "loopback.small",
            "image_id": "local", "created_at": "2026-01-01T00:00:00+00:00", "price": 0.01,
            "remote_user": "x", "secret": "s", "init_command": "", "authorized_key": None,
        })
    )  # fmt: skip
    (planted / "tags.json").write_text("{}")
    return planted


async def test_a_planted_record_with_a_path_as_id_deletes_nothing_outside(
    tmp_path: Path, state_dir: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    async with await new_set(state_dir) as iset:
        # a record under a name create never makes, and one under another
        # record's name: neither is listed, so neither can be destroyed
        odd = plant_record(state_dir, "planted", VICTIM_ID)
        other = plant_record(state_dir, "lb-0123456789abcdef", VICTIM_ID)
        assert await iset.instances() == []
        for planted in (odd, other):
            shutil.rmtree(planted)
        # an instance object carrying such an id cannot reach outside either
        real = await iset.create(
            cloudvm.InstanceType(
                name="s", provider_type="loopback.small", vcpus=1, ram=1, scratch=0,
                included_scratch=0, added_scratch=0, price=0.0,
            ),
            cloudvm.ImageID("local"), {}, cloudvm.InitCommand(""), None,
        )  # fmt: skip
        real._record = type(real._record)(**{**real._record.__dict__, "id": VICTIM_ID})  # type: ignore[attr-defined]
        real._id = cloudvm.InstanceID(VICTIM_ID)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="not a loopback instance id"):
            await real.destroy()
        with pytest.raises(ValueError, match="not a loopback instance id"):
            await real.set_tags({"a": "b"})
        for instance in await iset.instances():
            await instance.destroy()
    assert (victim / "precious").read_text() == "keep me"


async def test_the_state_dir_is_created_private(state_dir: Path) -> None:
    async with await new_set(state_dir):
        pass
    for path in (state_dir, state_dir / "instances"):
        assert path.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
async def test_a_state_dir_others_can_write_is_refused(state_dir: Path, mode: int) -> None:
    state_dir.mkdir()  # noqa: ASYNC240
    state_dir.chmod(mode)  # noqa: ASYNC240
    with pytest.raises(cloudvm.ConfigError, match="writable by its group or by others"):
        await new_set(state_dir)
    state_dir.chmod(0o700)  # noqa: ASYNC240
    (state_dir / "instances").mkdir(mode=0o700)
    (state_dir / "instances").chmod(mode)
    with pytest.raises(cloudvm.ConfigError, match="instances is writable"):
        await new_set(state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a dir owned by another user needs root")
async def test_a_state_dir_of_another_user_is_refused(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)  # noqa: ASYNC240
    os.chown(state_dir, 12345, 12345)
    try:
        with pytest.raises(cloudvm.ConfigError, match="belongs to uid 12345"):
            await new_set(state_dir)
    finally:
        os.chown(state_dir, 0, 0)


async def test_a_state_dir_that_is_a_file_is_refused(state_dir: Path) -> None:
    await anyio.Path(state_dir).write_text("not a dir")
    with pytest.raises(cloudvm.ConfigError, match="is not a directory"):
        await new_set(state_dir)
    state_dir.unlink()  # noqa: ASYNC240
