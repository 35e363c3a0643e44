"""Runs that differ only in their seed as one recipe: its figures as mean ± sd over the seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarbench import record
from cifarbench.files import write_csv
from cifarbench.runs import Run
from cifarbench.tables import Spread, spread

RECIPE_HEADERS = [
    "Recipe",
    "Model",
    "n",
    "Seeds",
    "Epochs",
    "Test accuracy (%)",
    "Test loss",
    "Reported metric",
    "Reported (%)",
    "Reported test loss",
    "Measured (%)",
    "Difference (points)",
    "Reported in",
    "Minutes",
    "Hardware",
    "Status",
    "Note",
]
OFF_BY = 3.0  # points between the measured and the reported figure from which a row shows its note
NOT_COMPARABLE = "not comparable"  # the difference cell of a figure that measures something else (its note says why)


def recipes(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per recipe: runs that differ only in their seed are one row, their figures as
    mean ± sd over the completed ones (n), in order of the recipe's label."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.recipe, []).append(run)
    entries = []
    for members in groups.values():
        done = [r for r in members if r.status == record.COMPLETED]
        first = members[0]
        reported = first.reported
        measured = spread([r.measured(reported["metric"]) for r in done]) if reported else None
        difference = against(None if measured is None else measured.mean, reported)
        statuses = {
            status: sum(r.status == status for r in members) for status in dict.fromkeys(r.status for r in members)
        }
        entries.append(
            {
                "recipe": first.label,
                "reports_experiment": first.reports_experiment,
                "model": first.model,
                "n": len(done),
                "seeds": ", ".join(
                    str(r.config.get("seed")) for r in sorted(done, key=lambda r: r.config.get("seed", 0))
                ),
                "epochs": spread([r.metrics.get("epochs_run") for r in done]),
                "test_acc": spread([r.test("accuracy") for r in done]),
                "test_loss": spread([r.test("loss") for r in done]),
                "test_without_tta": spread([(r.metrics.get("test_without_tta") or {}).get("accuracy") for r in done]),
                "reported_metric": reported and reported["metric"],
                "reported": reported and reported["value"],
                "reported_loss": reported and reported.get("loss"),
                "measured": measured,
                "difference": difference,
                "source": reported and reported["source"],
                "minutes": spread([r.minutes for r in done]),
                "hardware": "; ".join(dict.fromkeys(r.hardware for r in done if r.hardware)) or None,
                "status": ", ".join(f"{count} {status}" for status, count in statuses.items()),
                "note": _note(reported, difference),
            }
        )
    return sorted(entries, key=lambda e: e["recipe"])


def against(measured: float | None, reported: dict[str, Any] | None) -> float | str | None:
    """Measured minus reported in points, or NOT_COMPARABLE where the report's figure is not one of
    this recipe (`reported.comparable: false`); None without both figures."""
    if measured is None or not reported or reported.get("value") is None:
        return None
    return NOT_COMPARABLE if reported.get("comparable") is False else round(measured - reported["value"], 2)


def _note(reported: dict[str, Any] | None, difference: float | str | None) -> str | None:
    """Which reading of the report the row is (always), and the report's note where it explains the difference."""
    if not reported:
        return None
    notes = [reported.get("reading"), reported.get("note") if _shows_note(difference) else None]
    return " ".join(n for n in notes if n) or None


def _shows_note(difference: float | str | None) -> bool:
    """A note explains a figure that cannot be compared, or one more than OFF_BY points off."""
    return difference == NOT_COMPARABLE or (isinstance(difference, float | int) and abs(difference) > OFF_BY)


def show(value: Any, digits: int = 2) -> Any:
    """A table cell: a spread as 'mean ± sd', or (epochs, minutes) as its mean to `digits`."""
    if isinstance(value, Spread):
        return str(value) if digits == 2 else round(value.mean, digits)
    return value


def recipe_table(entries: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for markdown and HTML: spreads as 'mean ± sd', epochs and minutes as means."""
    return [
        [
            e["recipe"],
            e["model"],
            e["n"],
            e["seeds"],
            show(e["epochs"], 1),
            show(e["test_acc"]),
            show(e["test_loss"], 3),
            e["reported_metric"],
            e["reported"],
            e["reported_loss"],
            show(e["measured"]),
            e["difference"],
            e["source"],
            show(e["minutes"], 1),
            e["hardware"],
            e["status"],
            e["note"],
        ]
        for e in entries
    ]


def write_recipes_csv(path: Path, entries: list[dict[str, Any]]) -> None:
    """The seeds-aggregated table with each spread as its own mean, sd columns."""
    spreads = ("epochs", "test_acc", "test_loss", "test_without_tta", "measured", "minutes")
    headers = [k for k in entries[0] if k not in spreads] if entries else []
    headers += [f"{k}_{part}" for k in spreads for part in ("mean", "sd")]
    rows = []
    for e in entries:
        row = [e[k] for k in headers if k in e]
        for k in spreads:
            value = e[k]
            row += (
                [None, None]
                if value is None
                else [round(value.mean, 4), None if value.sd is None else round(value.sd, 4)]
            )
        rows.append(row)
    write_csv(path, headers, rows)
