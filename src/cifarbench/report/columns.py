"""One row per run: the columns of 000's Table 1, the report's figure beside the measured one, and more."""

from __future__ import annotations

from typing import Any

from cifarbench.errors import UserError
from cifarbench.report.recipes import against
from cifarbench.runs import Run


def _round(value: float | None, scale: float = 1.0, digits: int = 2) -> float | None:
    return None if value is None else round(value / scale, digits)


def _reported(run: Run, key: str) -> Any:
    figure = run.reported
    return None if figure is None else figure.get(key)


def _measured(run: Run) -> float | None:
    figure = run.reported
    return None if figure is None else _round(run.measured(figure["metric"]))


def _difference(run: Run) -> float | str | None:
    return against(_measured(run), run.reported)


# Column name -> how to get it from a run. The shape of 000's Table 1, then the report's own figure
# beside the measured one (the same metric: test or validation accuracy), F1, status and the run.
COLUMNS: dict[str, Any] = {
    "model": lambda r: r.model,
    "preset": lambda r: r.preset,
    "dataset": lambda r: r.dataset,
    "params_m": lambda r: _round(r.metrics.get("params", {}).get("total", None), 1e6, 2),
    "epochs": lambda r: r.metrics.get("epochs_run", len(r.history) or None),
    "train_acc": lambda r: _round(r.metrics.get("train", {}).get("accuracy")),
    "test_acc": lambda r: _round(r.test("accuracy")),
    "top5_acc": lambda r: _round(r.test("top5_accuracy")),  # recorded from 11 classes on
    "test_error": lambda r: _round(r.test("error")),
    "median_epoch_s": lambda r: _round(r.metrics.get("median_epoch_seconds"), 1, 1),
    "fine_tuned": lambda r: "Y" if r.pretrained else "N",
    "reported_metric": lambda r: _reported(r, "metric"),
    "reported": lambda r: _reported(r, "value"),
    "measured": _measured,
    "difference": _difference,
    "source": lambda r: _reported(r, "source"),
    "minutes": lambda r: _round(r.minutes, 1, 1),
    "hardware": lambda r: r.hardware,
    "f1_macro": lambda r: _round(r.test("f1_macro"), 1, 4),
    "seed": lambda r: r.config.get("seed"),
    "status": lambda r: r.status,
    "run": lambda r: str(r.path),
}
HEADERS = {
    "model": "Model",
    "params_m": "Parameters (M)",
    "epochs": "Epochs",
    "train_acc": "Train accuracy (%)",
    "test_acc": "Test accuracy (%)",
    "test_error": "Test error (%)",
    "median_epoch_s": "Median epoch time (s)",
    "fine_tuned": "Fine-tuned",
    "preset": "Preset",
    "dataset": "Data set",
    "top5_acc": "Top-5 accuracy (%)",
    "reported_metric": "Reported metric",
    "reported": "Reported (%)",
    "measured": "Measured (%)",
    "difference": "Difference (points)",
    "source": "Reported in",
    "minutes": "Minutes",
    "hardware": "Hardware",
    "seed": "Seed",
    "f1_macro": "F1 macro",
    "status": "Status",
    "run": "Run",
}
RUN_HEADERS = [HEADERS[c] for c in COLUMNS]


def run_table(runs: list[Run], sort: str, descending: bool) -> list[list[Any]]:
    if sort not in COLUMNS:
        raise UserError(f"--sort {sort!r} is not a column; choose one of {', '.join(COLUMNS)}")
    rows = [[get(run) for get in COLUMNS.values()] for run in runs]
    index = list(COLUMNS).index(sort)
    present = [r for r in rows if r[index] is not None]
    missing = [r for r in rows if r[index] is None]  # unfinished runs have no test accuracy: last
    return sorted(present, key=lambda r: r[index], reverse=descending) + missing
