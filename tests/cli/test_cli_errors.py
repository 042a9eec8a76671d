"""The command's usage and config errors: exit 2, one clear line, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cloud, Result, cloudvm


def usage_error(result: Result, *needles: str) -> None:
    assert result.code == 2, result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_unknown_driver_lists_the_installed_ones() -> None:
    usage_error(
        await cloudvm("list", "--driver", "nope"), "no cloudvm driver named 'nope'", "loopback"
    )


async def test_missing_driver_is_a_usage_error() -> None:
    usage_error(await cloudvm("list"), "--driver")


async def test_bad_config_names_the_field_and_not_the_values(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"cloud": "x", "secret_access_key": "hunter2-very-secret"}))
    result = await cloudvm("list", "--driver", "fake", "--config", str(config))
    usage_error(result, "secret_access_key", "Extra inputs are not permitted")
    assert "hunter2" not in result.stderr


async def test_config_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    usage_error(await cloudvm("list", "--driver", "fake", "--config", str(missing)), "cannot read")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    usage_error(
        await cloudvm("list", "--driver", "fake", "--config", str(broken)), "not valid JSON"
    )
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    usage_error(
        await cloudvm("list", "--driver", "fake", "--config", str(listy)), "must hold a mapping"
    )


async def test_yaml_config(cloud: Cloud, tmp_path: Path) -> None:
    config = tmp_path / "loopback.yaml"
    config.write_text(f"state_dir: {cloud.state_dir}\nmax_instances: 3\n")
    result = await cloudvm("list", "--driver", "loopback", "--config", str(config), "--json")
    assert (result.code, result.stdout) == (0, "[]\n"), result.stderr
    config.write_text("state_dir: [unclosed\n")
    usage_error(
        await cloudvm("list", "--driver", "loopback", "--config", str(config)), "not valid YAML"
    )


async def test_yaml_without_pyyaml_says_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "no-yaml"
    blocker.mkdir()
    (blocker / "yaml.py").write_text("raise ImportError('PyYAML is not installed')\n")
    config = tmp_path / "c.yml"
    config.write_text("cloud: x\n")
    result = await cloudvm(
        "list", "--driver", "fake", "--config", str(config), env={"PYTHONPATH": str(blocker)}
    )
    usage_error(result)
    assert result.stderr == (
        f"cloudvm: error: {config} is YAML, which needs PyYAML. Install it with: "
        "pip install 'aiocloudvm[yaml]' (or: pip install pyyaml), or give a JSON file\n"
    )
