"""mkdocs hook: config tables generated from the drivers' pydantic models.

A line ``<!-- config-table: package.module:Model -->`` in a page becomes a
table of the model's keys: type (with its bounds), default and meaning. Types,
bounds and defaults come from the model's fields, so the table cannot drift
from the code. The meaning comes from the model itself too: a field's
``description``, else a ``#:`` comment above the field, else the class
docstring (an RST simple table of keys, or paragraphs starting
````key``:``). A field documented nowhere is a warning, which fails
``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import collections.abc
import enum
import importlib
import inspect
import json
import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pydantic
from pydantic.fields import FieldInfo
from rst_docstrings import rst_to_markdown, simple_tables

__all__ = ["config_table", "field_meanings", "on_page_markdown"]

log = logging.getLogger("mkdocs.hooks.config_tables")

MARKER = re.compile(r"^<!-- config-table: ([\w.]+):(\w+) -->$", re.MULTILINE)
# "``key``: meaning" or "``a`` / ``b``: meaning", at the start of a docstring line.
_PARAGRAPH_KEYS = re.compile(r"^((?:``\w+``(?: / |, )?)+):\s*(.*)$")
_FIELD_LINE = re.compile(r"^\s*(\w+)\s*:")
_COMMENT = re.compile(r"^\s*#:\s?(.*)$")
_LITERAL_KEY = re.compile(r"^(\s+)(\w+)\s+(\S.*)$")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace every config-table marker of ``page`` with its table."""

    def table(match: re.Match[str]) -> str:
        model = getattr(importlib.import_module(match[1]), match[2])
        return config_table(model, where=f"{page.file.src_uri}: {match[1]}:{match[2]}")

    return MARKER.sub(table, markdown)


def config_table(model: type[pydantic.BaseModel], *, where: str) -> str:
    """The Markdown table of ``model``'s keys (warning about undocumented ones)."""
    meanings = field_meanings(model)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = meanings.get(name)
        if not meaning:
            log.warning(
                f"{where}: config key {name!r} has no meaning: document it in the model "
                "(a Field description, a '#:' comment or the class docstring)"
            )
        cells = (f"`{name}`", _type_cell(field), _default_cell(field), meaning or "")
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def field_meanings(model: type[pydantic.BaseModel]) -> dict[str, str]:
    """What each field of ``model`` means, in Markdown, from the model's own text."""
    names = set(model.model_fields)
    source, module_doc = _class_source(model)
    found: dict[str, str] = {}
    pairs = [
        *_from_docstring(inspect.getdoc(model) or "", names),
        *_from_comments(source, names),
        *_from_docstring(module_doc, names),
    ]
    for name, text in pairs:
        found.setdefault(name, text)
    for name, field in model.model_fields.items():
        if field.description:
            found[name] = field.description
    for name in sorted(names - set(found)):
        # A key documented only inside another's meaning ("one disk of
        # ``scratch_disk_type``") shares that meaning.
        mentions = [text for text in found.values() if f"``{name}``" in text]
        if mentions:
            found[name] = mentions[0]
    return {name: rst_to_markdown(text) for name, text in found.items()}


def _class_source(model: type) -> tuple[str, str]:
    # The class's source and its module's docstring. Packages re-export their
    # models under the package's name (``__module__`` rewritten), so the
    # module that defines the class is looked for among the package's.
    package = model.__module__.split(".")[0]
    for name, module in list(sys.modules.items()):
        if name != package and not name.startswith(package + "."):
            continue
        if getattr(module, model.__name__, None) is not model:
            continue
        try:
            text = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.name == model.__name__:
                return ast.get_source_segment(text, node) or "", inspect.getdoc(module) or ""
    return "", ""


def _from_docstring(doc: str, names: set[str]) -> list[tuple[str, str]]:
    lines = doc.splitlines()
    pairs = [*_from_literal_list(lines, names)]
    for _start, _end, _header, rows in simple_tables(lines):
        for row in rows:
            keys = re.findall(r"``(\w+)``", row[0]) or row[0].replace(",", " ").split()
            pairs += [(key, " ".join(row[1:])) for key in keys if key in names]
    current: list[str] = []
    text: list[str] = []
    for line in [*lines, ""]:
        match = _PARAGRAPH_KEYS.match(line.strip())
        if match or not line.strip():
            pairs += [(key, " ".join(text)) for key in current if key in names]
            current, text = [], []
        if match:
            current, text = re.findall(r"``(\w+)``", match[1]), [match[2]]
        elif current and line.strip():
            text.append(line.strip())
    return pairs


def _from_literal_list(lines: list[str], names: set[str]) -> list[tuple[str, str]]:
    # A literal block of "key    meaning" lines, continued by deeper-indented
    # lines (the fake cloud's module docstring).
    pairs: list[tuple[str, str]] = []
    indent = -1
    for line in lines:
        depth = len(line) - len(line.lstrip())
        match = _LITERAL_KEY.match(line)
        if match and match[2] in names and (indent < 0 or depth == indent):
            indent = depth
            pairs.append((match[2], match[3].strip()))
        elif pairs and line.strip() and depth > indent >= 0:
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {line.strip()}")
        elif line.strip():
            indent = -1 if depth <= max(indent, 0) else indent
    return pairs


def _from_comments(source: str, names: set[str]) -> list[tuple[str, str]]:
    # Sphinx's "#:" comments above a field. Fields on the lines right after a
    # commented one (no blank line, no comment between) share its comment:
    # "#: The virtual network and subnet." above ``network`` and ``subnet``.
    pairs = []
    comment: list[str] = []
    shared = ""
    for line in source.splitlines():
        if match := _COMMENT.match(line):
            comment.append(match[1])
            continue
        field = _FIELD_LINE.match(line)
        if field and field[1] in names:
            shared = " ".join(comment) or shared
            if shared:
                pairs.append((field[1], shared))
        else:
            shared = ""
        comment = []
    return pairs


def _type_cell(field: FieldInfo) -> str:
    bounds = [_bound(item) for item in field.metadata]
    text = _type_name(field.annotation)
    shown = [bound for bound in bounds if bound]
    return f"{text} ({', '.join(shown)})" if shown else text


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, collections.abc.Mapping):
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}" if args else "map"
    if supertype := getattr(annotation, "__supertype__", None):  # a NewType such as ImageID
        return _type_name(supertype)
    if isinstance(annotation, type):
        if issubclass(annotation, pydantic.SecretStr):
            return "string (secret, never logged)"
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, bool):
            return "boolean"
        if issubclass(annotation, enum.Enum):
            return " | ".join(f"`{json.dumps(member.value)}`" for member in annotation)
        if issubclass(annotation, pydantic.BaseModel):
            return f"`{annotation.__name__}`"
        simple = {str: "string", int: "integer", float: "number"}
        if annotation in simple:
            return simple[annotation]
    if "Url" in getattr(annotation, "__name__", ""):
        return "URL"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _bound(item: object) -> str:
    limits = {
        annotated_types.Ge: ("≥", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("≤", "le"),
        annotated_types.Lt: ("<", "lt"),
    }
    for kind, (sign, attr) in limits.items():
        if isinstance(item, kind):
            return f"{sign} {getattr(item, attr)}"
    if isinstance(item, annotated_types.MinLen):
        return "not empty" if item.min_length == 1 else f"at least {item.min_length} long"
    if isinstance(item, annotated_types.MaxLen):
        return f"at most {item.max_length} long"
    pattern = getattr(item, "pattern", None)
    return f"matching `{pattern}`" if isinstance(pattern, str) else ""


def _default_cell(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    if factory is None:
        return _value(field.default)
    if factory in (list, dict, tuple, set):
        return _value(factory())
    name = getattr(factory, "__name__", "")
    if name == "<lambda>":
        return _value(factory())  # type: ignore[call-arg]
    doc = inspect.getdoc(factory) or ""
    module = getattr(factory, "__module__", "")
    if module.startswith("cloudvm") and doc:
        return rst_to_markdown(doc.split("\n\n")[0].replace("\n", " "))
    return f"`{module}.{name}()`"


def _value(value: object) -> str:
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path | enum.Enum):
        value = str(value.value if isinstance(value, enum.Enum) else value)
    return f"`{json.dumps(value, default=str)}`"
