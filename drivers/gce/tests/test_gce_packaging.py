"""The driver's dependency floors are past the published advisories."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"

# package -> the first version past its advisories that matter here.
FLOORS = {
    "requests": "2.33.0",  # CVE-2024-35195, CVE-2024-47081, CVE-2026-25645
    "protobuf": "6.33.5",  # CVE-2024-7254, CVE-2025-4565, CVE-2026-0994 (json_format)
    "google-cloud-compute": "1.30",  # accepts protobuf 6
    "google-api-core": "2.25",  # accepts protobuf 6
}
TEST_FLOORS = {"aiohttp": "3.14.1"}  # CVE-2025-69223.., CVE-2026-34513.., CVE-2026-34993, ...


def _requirements(section: list[str]) -> dict[str, Requirement]:
    parsed = (Requirement(line) for line in section)
    return {r.name.lower(): r for r in parsed}


def _lowest_allowed(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    assert floors, f"{requirement} has no floor"
    return max(floors)


def _project() -> dict[str, object]:
    with PYPROJECT.open("rb") as f:
        project = tomllib.load(f)["project"]
    assert isinstance(project, dict)
    return project


@pytest.mark.parametrize(("package", "floor"), sorted(FLOORS.items()))
def test_runtime_floors_are_past_the_advisories(package: str, floor: str) -> None:
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    requirement = _requirements(dependencies)[package]
    assert _lowest_allowed(requirement) >= Version(floor)
    # and what is installed here meets it
    assert requirement.specifier.contains(importlib.metadata.version(package))


@pytest.mark.parametrize(("package", "floor"), sorted(TEST_FLOORS.items()))
def test_test_floors_are_past_the_advisories(package: str, floor: str) -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    requirement = _requirements(extras["test"])[package]
    assert _lowest_allowed(requirement) >= Version(floor)
