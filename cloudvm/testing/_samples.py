"""Checks for what a driver ships beside its code: a sample config that
documents every key, and example programs run from a test on local hosts."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import pydantic

from .._text import printable
from ._hosted import HostedDriver

__all__ = ["import_program", "load_sample_config", "run_example", "undocumented_keys"]


def undocumented_keys(model: type[pydantic.BaseModel], sample_text: str) -> list[str]:
    """The top-level keys of ``model`` that ``sample_text`` does not document.

    A key is documented when a line of the sample starts with ``key:`` (a
    setting) or ``# key:`` (an optional setting shown commented out). The key
    is the field's alias where it has one (what a config file must spell),
    else its name. Returns the undocumented keys in the model's field order;
    empty when every key is documented. Reads nothing but its arguments.
    """
    missing = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if not re.search(rf"^(# )?{re.escape(key)}:", sample_text, re.MULTILINE):
            missing.append(key)
    return missing


def load_sample_config(
    path: Path | str,
    model: type[pydantic.BaseModel],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config mapping in the YAML (or JSON) file at ``path``, with
    ``overrides`` laid over its top-level keys, once ``model`` has validated
    the result.

    Returns a mapping (not the model), so that a test can point a sample at
    its local stand-in for the cloud and run a program on it
    (:func:`run_example`). Raises OSError when the file cannot be read,
    ImportError (saying what to install) without PyYAML, ValueError naming
    ``path`` when it is not YAML or does not hold a mapping, and
    ``pydantic.ValidationError`` when ``model`` rejects the result.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    yaml = _yaml()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"sample config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"sample config {path} must hold a mapping, not {type(data).__name__}")
    config = {**data, **(overrides or {})}
    model.model_validate(config)
    return config


def import_program(path: Path | str) -> ModuleType:
    """Import the Python file at ``path`` (an example program, say) as the
    module named after its stem, and return that module.

    The file's directory is on ``sys.path`` while it is imported, so that it
    can import its sibling modules; ``sys.path`` is as before when this
    returns or raises. The same file imported again returns the module
    already imported. Raises FileNotFoundError when there is no such file,
    ImportError when another file of that module name is imported already (or
    would be found first), and whatever the file raises while it is imported.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no program at {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        _check_origin(loaded, path)
        return loaded
    directory = str(path.parent)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(directory)
    _check_origin(module, path)
    return module


async def run_example(
    program: Path | str,
    *args: str,
    config: Mapping[str, Any],
    directory: Path | str,
    driver: HostedDriver,
) -> Any:
    """Run an example program on ``driver``'s hosts as a user runs it on a
    cloud, and check that it destroyed every instance it created.

    ``program`` follows the convention of cloudvm's own examples: a
    ``main(argv, *, driver)`` function (plain or async) that reads its driver
    config from the file given with ``--config``. This writes ``config`` as
    JSON (which YAML readers read too) to ``<directory>/<program stem>.json``,
    imports ``program`` (:func:`import_program`) and, with ``driver`` entered,
    calls ``main(["--config", <that file>, *args], driver=driver)``.

    Returns what ``main`` returned (awaited). Guarantees ``driver`` is closed
    (every host halted) when this returns or raises. Raises AssertionError
    naming the instances whose hosts were still up when ``main`` returned,
    TypeError when ``program`` has no callable ``main`` or ``config`` is not
    JSON-serialisable, and whatever importing or running ``program`` raises.
    """
    async with driver:
        path = Path(directory) / f"{Path(program).stem}.json"
        text = json.dumps(dict(config), indent=2)
        # Files and imports off the event loop, which the program's hosts share.
        await anyio.Path(path).write_text(text, encoding="utf-8")
        module = await anyio.to_thread.run_sync(import_program, program)
        main = getattr(module, "main", None)
        if not callable(main):
            raise TypeError(f"{program} has no main function")
        result = main(["--config", str(path), *args], driver=driver)
        if inspect.isawaitable(result):
            result = await result
        still_up = sorted(driver.hosts)
        if still_up:
            raise AssertionError(
                f"{program} returned with the hosts of "
                f"{', '.join(printable(i) for i in still_up)} still up: "
                "it did not destroy every instance it created"
            )
    return result


def _check_origin(module: ModuleType, path: Path) -> None:
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != path:
        raise ImportError(
            f"cannot import {path} as {module.__name__!r}: that name is {origin or 'a builtin'}"
        )


def _yaml() -> Any:
    try:
        # Imported by name: PyYAML is optional and ships no type stubs.
        return importlib.import_module("yaml")
    except ImportError:
        raise ImportError(
            "sample configs are YAML, which needs PyYAML. Install it with: "
            "pip install 'aiocloudvm[yaml]' (or: pip install pyyaml)"
        ) from None
