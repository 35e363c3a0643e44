"""Each report's own figure against cifarbench's: the model table, and the report presets not measured."""

from __future__ import annotations

from typing import Any

from cifarbench import record
from cifarbench.report.recipes import NOT_COMPARABLE, show
from cifarbench.runs import REPORT_PRESET, Run

MODEL_HEADERS = [
    "Model",
    "The report's best",
    "Reported (%)",
    "Measured here (%)",
    "cifarbench's recipe",
    "n",
    "Test accuracy (%)",
    "Without TTA (%)",
    "Against the reported (points)",
    "Epochs",
    "Minutes",
]


def _reports_best(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest figure among the report recipes in `entries`, test accuracy before validation
    accuracy (a report's validation figure is not what a test accuracy is measured against first)."""
    figures = [e for e in entries if e["reports_experiment"] and e["reported"] is not None]
    return max(figures, key=lambda e: (e["reported_metric"] == "test_acc", e["reported"]), default=None)


def model_table(entries: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per model and recipe of cifarbench's own: the model's best report figure among the
    report recipes in `entries` beside each of cifarbench's recipes for it. Every recipe of a model is
    listed, so no row is chosen by its test accuracy; a model with no recipe of cifarbench's own has
    one row with that side empty."""
    rows = []
    for model in sorted({e["model"] for e in entries}):
        of_model = [e for e in entries if e["model"] == model]
        best = _reports_best(of_model)
        report_side = [None, None, None]
        if best is not None:  # the metric named: some reports give validation accuracy only
            report_side = [best["recipe"], f"{best['reported_metric']} {best['reported']}", show(best["measured"])]
        own = [e for e in of_model if not e["reports_experiment"]]
        comparable = best is None or best["difference"] != NOT_COMPARABLE
        if not own:
            rows.append([model, *report_side, *[None] * (len(MODEL_HEADERS) - 1 - len(report_side))])
        for e in own:
            acc = e["test_acc"]
            against = None if best is None or acc is None else round(acc.mean - best["reported"], 2)
            if not comparable:
                against = NOT_COMPARABLE
            figures = [show(acc), show(e["test_without_tta"]), against, show(e["epochs"], 1), show(e["minutes"], 1)]
            rows.append([model, *report_side, e["recipe"], e["n"], *figures])
    return rows


def unmeasured_presets(runs: list[Run]) -> list[list[Any]]:
    """Every report preset (conf/experiment/rNNN_*) and search preset (conf/search/*) with no
    completed run among `runs`: its figure, why it was not run (ImageNet weights that cannot be
    downloaded here, or its `reported.not_run`) and the command that runs it."""
    from hydra import compose, initialize_config_dir

    from cifarbench.config import config_dir, group_options, register_resolvers

    done = [run for run in runs if run.status == record.COMPLETED]
    measured = {run.preset for run in done}
    searched = {run.choices.get("search") for run in runs}
    rows = []
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        presets = [("experiment", name) for name in group_options("experiment") if REPORT_PRESET.match(name)]
        presets += [("search", name) for name in group_options("search")]
        for group, name in presets:
            if name in (searched if group == "search" else measured):
                continue
            cfg = compose("config", overrides=[f"{group}={name}"])
            figure = cfg.get("reported") or {}
            value = figure.get("value")
            shown = "-" if value is None else f"{figure.get('metric')} {value}"
            if str(cfg.model.get("weights", "none")) not in ("none", "None"):
                why = "starts from ImageNet weights, which cannot be downloaded on this project's machines"
            else:
                why = figure.get("not_run") or "no completed run among the runs read"
            command = (
                f"cifarbench train -m search={name}" if group == "search" else f"cifarbench train experiment={name}"
            )
            rows.append([name, shown, figure.get("source", "-"), why, f"`{command}`"])
    return rows
