"""Plain tables of results: markdown rendering, and a figure's mean ± sd over seeds.

Shared by `cifarbench report`, a sweep's summary and a search's summary; free of torch and
matplotlib.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and count of one figure over the seeds of a recipe (sd None
    for a single value: one run has no spread)."""

    mean: float
    sd: float | None
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.sd is None else f"{self.mean:.2f} ± {self.sd:.2f}"


def spread(values: Sequence[float | None]) -> Spread | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))
