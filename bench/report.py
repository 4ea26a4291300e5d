"""Statistics, result rows and the printed table: pure functions, no services."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass
class Row:
    """One printed figure, always next to its baseline and the ratio of the two."""

    scenario: str
    case: str
    figure: str
    value: float
    baseline: str
    baseline_value: float
    runs: str  # what the figure is a median of, e.g. "3 x 20 jobs"

    @property
    def ratio(self) -> float | None:
        if self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": None if self.ratio is None else round(self.ratio, 4)}


@dataclass
class Table:
    """A titled grid of strings, printed with aligned columns."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def render(self) -> str:
        grid = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in grid) for i in range(len(self.headers))]

        def line(cells: list[str]) -> str:
            # Text columns left-aligned, numbers right-aligned.
            return "  ".join(
                cell.rjust(width) if _is_number(cell) else cell.ljust(width)
                for cell, width in zip(cells, widths)
            ).rstrip()

        rule = "  ".join("-" * width for width in widths)
        return "\n".join([self.title, line(self.headers), rule, *(line(row) for row in self.rows)])


@dataclass
class ScenarioResult:
    name: str
    rows: list[Row]
    notes: list[str]
    tables: list[Table] = field(default_factory=list)  # breakdowns printed after the main table
    data: dict[str, Any] = field(default_factory=dict)  # the raw measurements, for the JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.to_dict() for row in self.rows], "notes": self.notes,
            "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows} for t in self.tables],
            "data": self.data,
        }


def main_table(rows: list[Row]) -> Table:
    table = Table("", ["scenario", "case", "figure", "value", "baseline", "baseline value", "ratio", "runs"])
    for row in rows:
        table.rows.append([
            row.scenario, row.case, row.figure, fmt(row.value), row.baseline, fmt(row.baseline_value),
            "-" if row.ratio is None else f"{row.ratio:.2f}", row.runs,
        ])
    return table


def fmt(value: float | None) -> str:
    """Three significant figures, without scientific notation for everyday sizes."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
        return True
    except ValueError:
        return False
