"""Cancellation fuzz fixtures: a private temp dir, so leftovers can be counted."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts new temporary files and dirs during the test (test
    servers make their work dirs there): whatever is in it at the end leaked."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp
