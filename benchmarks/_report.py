"""The printed table, the JSON files, the plot and the machine notes."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _stats import CaseResult, Row

__all__ = ["machine", "plot", "table", "write_json"]

_PACKAGES = (
    "aiocloudvm",
    "aiocloudvm-ec2",
    "asyncssh",
    "parallel-ssh",
    "aiobotocore",
    "moto",
    "anyio",
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{total_kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        openssh = subprocess.run(
            ["ssh", "-V"], capture_output=True, text=True, timeout=10
        ).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        openssh = None
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "packages": versions,
        "openssh": openssh,
    }


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(results: Sequence[CaseResult]) -> str:
    """Medians with min-max and ratios, one line per row; skips and notes after."""
    header = ("case", "variant", "N", "median", "min-max", "unit", "ratios")
    lines: list[tuple[str, ...]] = [header]
    for result in results:
        for row in result.rows:
            ratios = ", ".join(f"{v:.2f}x {name}" for name, v in result.ratios(row))
            lines.append(
                (
                    result.name,
                    row.variant,
                    "" if row.n is None else str(row.n),
                    _number(row.median),
                    f"{_number(row.low)}-{_number(row.high)}",
                    row.unit,
                    ratios,
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    for result in results:
        if result.skipped:
            out.append(f"[{result.name}] {result.skipped}")
        for note in result.notes:
            out.append(f"[{result.name}] {note}")
    return "\n".join(out).rstrip()


def write_json(out: Path, results: Sequence[CaseResult], info: dict[str, Any]) -> list[Path]:
    """One file per case plus ``summary.json``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        path = out / f"{result.name}.json"
        path.write_text(json.dumps({"machine": info, **result.as_json()}, indent=2) + "\n")
        written.append(path)
    summary = out / "summary.json"
    summary.write_text(
        json.dumps({"machine": info, "cases": [result.as_json() for result in results]}, indent=2)
        + "\n"
    )
    written.append(summary)
    return written


def plot(out: Path, results: Sequence[CaseResult]) -> Path | None:
    """A PNG of how each cost grows with N (one panel per case that has N);
    None when matplotlib is missing or no case has more than one N."""
    try:
        # Imported by name: an optional dependency the type checker may not have.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    panels: list[tuple[CaseResult, dict[tuple[str, str], list[Row]]]] = []
    for result in results:
        series: dict[tuple[str, str], list[Row]] = {}
        for row in result.rows:
            if row.n is not None:
                series.setdefault((row.variant, row.unit), []).append(row)
        if any(len(rows) > 1 for rows in series.values()):
            panels.append((result, series))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for axis, (result, series) in zip(axes[0], panels, strict=True):
        # The unit whose series grows with N (a case may also have fixed-N rows).
        unit = max(series.items(), key=lambda item: len(item[1]))[0][1]
        for (variant, row_unit), rows in sorted(series.items()):
            if row_unit != unit:
                continue
            rows = sorted(rows, key=lambda row: row.n or 0)
            xs = [row.n for row in rows]
            medians = [row.median for row in rows]
            below = [row.median - row.low for row in rows]
            above = [row.high - row.median for row in rows]
            axis.errorbar(xs, medians, yerr=[below, above], marker="o", capsize=3, label=variant)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("N")
        axis.set_ylabel(unit)
        axis.set_title(result.title, fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "growth.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
