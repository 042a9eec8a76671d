"""The driver's dependency floors leave out every version with a published
advisory that matters here, and what is installed meets them."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"

# package -> the last version with an advisory: the floor must exclude it.
RUNTIME = {
    "aiohttp": "3.14.2",  # CVE-2025-69223.., CVE-2026-34513.., GHSA-cq5v-8q36-5273 (3.14.3)
    "asyncssh": "2.23.0",  # CVE-2023-48795 (Terrapin), CVE-2026-54590, CVE-2026-54591
    "azure-core": "1.37.0",  # CVE-2026-21226 (deserialization of untrusted data)
    "azure-identity": "1.16.0",  # CVE-2024-35255 (elevation of privilege)
    "requests": "2.32.5",  # CVE-2024-35195, CVE-2024-47081, CVE-2026-25645
    "urllib3": "2.6.3",  # CVE-2025-66418, CVE-2026-21441, CVE-2026-44431, CVE-2026-44432
}
TEST = {
    "aiohttp": RUNTIME["aiohttp"],
    "cryptography": "49.0.0",  # CVE-2026-26007, CVE-2026-39892, CVE-2026-69247
}


def _requirements(section: str | None) -> dict[str, Requirement]:
    with PYPROJECT.open("rb") as f:
        project = tomllib.load(f)["project"]
    lines = (
        project["dependencies"] if section is None else project["optional-dependencies"][section]
    )
    requirements = (Requirement(line) for line in lines)
    return {r.name.lower(): r for r in requirements}


@pytest.mark.parametrize(("package", "vulnerable"), sorted(RUNTIME.items()))
def test_runtime_floors_exclude_versions_with_advisories(package: str, vulnerable: str) -> None:
    requirement = _requirements(None)[package]
    assert not requirement.specifier.contains(Version(vulnerable), prereleases=True)
    assert requirement.specifier.contains(importlib.metadata.version(package))


@pytest.mark.parametrize(("package", "vulnerable"), sorted(TEST.items()))
def test_test_floors_exclude_versions_with_advisories(package: str, vulnerable: str) -> None:
    requirement = _requirements("test")[package]
    assert not requirement.specifier.contains(Version(vulnerable), prereleases=True)
    assert requirement.specifier.contains(importlib.metadata.version(package))
