"""A missing driver's hint names the distribution that pip really installs."""

from __future__ import annotations

import pytest


def test_a_missing_driver_names_its_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib.metadata import EntryPoint, entry_points

    from cloudvm import _cli, _drivers

    # As on a machine where only the core is installed.
    def without_ec2(*, group: str) -> list[EntryPoint]:
        return [ep for ep in entry_points(group=group) if ep.name != "ec2"]

    monkeypatch.setattr(_drivers, "entry_points", without_ec2)
    monkeypatch.delitem(_drivers._cache, "ec2", raising=False)
    assert _cli.run(["list", "--driver", "ec2"]) == 2
    assert capsys.readouterr().err == (
        "cloudvm: error: cloudvm driver 'ec2' is not installed. "
        "Install it with: pip install aiocloudvm-ec2\n"
    )
