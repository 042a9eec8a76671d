"""Fixtures for the examples' tests: each example is imported from
``examples/`` as a user would run it from there."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import an example by its file name (without ``.py``), with
    ``examples/`` first on ``sys.path`` as when it runs as a script."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module
