"""run_example: an example program run on a HostedDriver's hosts, with its
config in a file, and caught when it leaves an instance behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudvm.testing import FakeCloud, HostedDriver, run_example

# A program in the examples' shape: main(argv, *, driver), config from --config.
PROGRAM = """\
import json
import logging

import anyio

import cloudvm

SMALL = cloudvm.InstanceType("small", "t3.small", 2, 2**31, 0, 0, 0, 0.02)


async def main(argv, *, driver):
    assert argv[0] == "--config"
    config = json.loads(await anyio.Path(argv[1]).read_text())
    log = logging.getLogger("example")
    instance_set = await driver.instance_set(config, cloudvm.InstanceSetID("example"), {}, log)
    try:
        instance = await instance_set.create(
            SMALL, cloudvm.ImageID("ami-example"), {}, cloudvm.InitCommand(""), None
        )
        if "--leave-it" not in argv:
            await instance.destroy()
    finally:
        await instance_set.stop()
    return {"args": argv[2:], "config_file": argv[1], "instance": instance.id}
"""

CONFIG = {"ssh": True, "rate_limits": None, "remote_user": "worker"}  # the `cloud` fixture's


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "program" / "run_example_program.py"
    path.parent.mkdir()
    path.write_text(PROGRAM, encoding="utf-8")
    yield path
    sys.modules.pop(path.stem, None)


async def test_the_program_runs_with_its_config_file_and_arguments(
    hosted: HostedDriver, cloud: FakeCloud, program: Path, tmp_path: Path
) -> None:
    result = await run_example(
        program, "--count", "1", config=CONFIG, directory=tmp_path, driver=hosted
    )
    assert result["args"] == ["--count", "1"]
    assert result["config_file"] == str(tmp_path / "run_example_program.json")
    assert cloud.instance_ids() == []
    assert hosted.hosts == {}


async def test_a_program_that_leaves_an_instance_fails_and_its_host_is_halted(
    hosted: HostedDriver, cloud: FakeCloud, program: Path, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match="still up") as caught:
        await run_example(program, "--leave-it", config=CONFIG, directory=tmp_path, driver=hosted)
    [left] = cloud.instance_ids()
    assert left in str(caught.value)
    assert hosted.hosts == {}  # the driver was closed: no host outlives the run


async def test_a_program_without_main_is_refused(hosted: HostedDriver, tmp_path: Path) -> None:
    program = tmp_path / "run_example_no_main.py"
    program.write_text("ANSWER = 42\n", encoding="utf-8")
    try:
        with pytest.raises(TypeError, match="no main function"):
            await run_example(program, config={}, directory=tmp_path, driver=hosted)
    finally:
        sys.modules.pop(program.stem, None)
