"""A griffe extension: the reStructuredText in cloudvm's docstrings, as Markdown.

The docstrings are Google style (sections parsed by griffe) but their inline
markup is reStructuredText, which mkdocstrings would show raw: roles such as
``:class:`X```, literal blocks introduced by ``::`` and simple tables bordered
by ``===`` lines. This rewrites those three before the docstrings are parsed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["RSTDocstrings", "rst_to_markdown", "simple_tables"]

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
_BORDER = re.compile(r"^ *=+( +=+)+ *$")


class RSTDocstrings(griffe.Extension):
    """Rewrites every docstring griffe loads (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


def rst_to_markdown(text: str) -> str:
    """``text`` with roles as code spans, ``::`` as ``:`` and simple tables as
    Markdown tables. Everything else is left as it is."""
    text = _ROLE.sub(_role, text)
    out = []
    for line in _convert_tables(text.splitlines()):
        if line.strip() == "::":
            continue
        out.append(line[:-1] if line.endswith("::") else line)
    return "\n".join(out)


def _role(match: re.Match[str]) -> str:
    # :class:`~a.b.C` shows "C"; :class:`a.b.C` shows "a.b.C".
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def simple_tables(lines: list[str]) -> list[tuple[int, int, list[str], list[list[str]]]]:
    """Each simple table in ``lines``: (its first line, the line after its
    last, the header's cells (empty without a header), the body's rows).

    A line whose first cell is empty continues the row above, as does a line
    after one whose first cell ends with a comma (several keys sharing one
    meaning).
    """
    tables = []
    i = 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            i += 1
            continue
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[i])]
        second = _next_border(lines, i + 1)
        if second is None:
            i += 1
            continue
        third = _next_border(lines, second + 1)
        if third is None:  # border, rows, border: no header
            header, body, end = [], lines[i + 1 : second], second + 1
        else:
            header, body, end = lines[i + 1 : second], lines[second + 1 : third], third + 1
        head_rows = _rows(header, spans)
        tables.append((i, end, head_rows[0] if head_rows else [], _rows(body, spans)))
        i = end
    return tables


def _next_border(lines: list[str], i: int) -> int | None:
    # The next border before a blank line, if any.
    for k in range(i, len(lines)):
        if _BORDER.match(lines[k]):
            return k
        if not lines[k].strip():
            return None
    return None


def _rows(lines: list[str], spans: list[tuple[int, int]]) -> list[list[str]]:
    starts = [start for start, _ in spans]
    rows: list[list[str]] = []
    for line in lines:
        bounds = [*starts[1:], max(len(line), starts[-1]) + 1]
        cells = [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
        if rows and (not cells[0] or rows[-1][0].endswith(",")):
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _convert_tables(lines: list[str]) -> list[str]:
    for start, end, header, body in reversed(simple_tables(lines)):
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        width = len(header or body[0])
        md = [_md_row(header or [""] * width), "|" + "---|" * width, *map(_md_row, body)]
        lines[start:end] = ["", *(indent + line for line in md), ""]
    return lines


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
