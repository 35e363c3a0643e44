"""One row per search (hydra/sweeper=optuna) found under the report's paths, from its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarbench.search.summary import SUMMARY_CSV, is_search_dir, overview

SEARCH_HEADERS = [
    "Search",
    "Trials",
    "Completed",
    "Pruned",
    "Failed",
    "Best trial",
    "Parameters",
    "Objective",
    "Test accuracy (%)",
]


def search_rows(paths: list[Path]) -> list[list[Any]]:
    """How each search's trials ended, and its best trial with the test accuracy the search measured."""
    found = {f.parent.resolve() for p in paths for f in [p / SUMMARY_CSV, *p.rglob(SUMMARY_CSV)] if f.is_file()}
    rows = []
    for folder in sorted(f for f in found if is_search_dir(f)):  # a grid sweep's summary is not a search's
        brief = overview(folder)
        if brief is not None:
            rows.append(list(brief.values()))
    return rows
