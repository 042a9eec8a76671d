"""Measuring: warm-up, interleaved repeats, median with min and max."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["CaseResult", "Probe", "Row", "interleaved"]

#: One measurement: run the variant once and return the value measured.
Probe = Callable[[], Awaitable[float]]


@dataclasses.dataclass
class Row:
    """One variant of one case at one size: its samples and what they mean.

    ``ratio_to`` names the rows (same case, same ``n`` and unit) that this
    row's median is divided by in the table; ``higher_is_better`` says which
    way is good.
    """

    case: str
    variant: str
    unit: str
    samples: list[float]
    n: int | None = None
    ratio_to: tuple[str, ...] | None = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def as_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "median": self.median,
            "min": self.low,
            "max": self.high,
        }


@dataclasses.dataclass
class CaseResult:
    """What one case produced: rows, notes for the reader, or why it skipped."""

    name: str
    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def ratios(self, row: Row) -> list[tuple[str, float]]:
        """``row``'s median over each of its baselines' medians."""
        found = []
        for baseline in row.ratio_to or ():
            for other in self.rows:
                same = (other.variant, other.n, other.unit) == (baseline, row.n, row.unit)
                if same and other.median:
                    found.append((baseline, row.median / other.median))
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "skipped": self.skipped,
            "notes": self.notes,
            "rows": [{**row.as_json(), "ratios": dict(self.ratios(row))} for row in self.rows],
            "extra": self.extra,
        }


async def interleaved(
    probes: dict[str, Probe], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every probe ``warmup`` times unmeasured, then ``repeats`` rounds in
    which each probe runs once; the order rotates from round to round, so that
    a slow spell of the machine hits every variant alike. Returns the samples."""
    names = list(probes)
    for _ in range(warmup):
        for name in names:
            await probes[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await probes[name]())
    return samples
