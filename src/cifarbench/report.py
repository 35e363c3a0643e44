"""`cifarbench report PATH...`: the comparison table of 000's Table 1, overlaid curves, one HTML page.

Tables are built from the runs' own files (runs.py); plots come from matplotlib.
"""

from __future__ import annotations

import base64
import csv
import html
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarbench.errors import UserError
from cifarbench.files import write_csv
from cifarbench.runs import REPORT_PRESET, Run, find_runs


def _reported(run: Run, key: str) -> Any:
    figure = run.reported
    return None if figure is None else figure.get(key)


def _measured(run: Run) -> float | None:
    figure = run.reported
    return None if figure is None else _round(run.measured(figure["metric"]))


def _difference(run: Run) -> float | None:
    measured, reported = _measured(run), _reported(run, "value")
    return None if measured is None or reported is None else round(measured - reported, 2)


# Column name -> how to get it from a run. The shape of 000's Table 1, then the report's own figure
# beside the measured one (the same metric: test or validation accuracy), F1, status and the run.
COLUMNS: dict[str, Any] = {
    "model": lambda r: r.model,
    "preset": lambda r: r.preset,
    "params_m": lambda r: _round(r.metrics.get("params", {}).get("total", None), 1e6, 2),
    "epochs": lambda r: r.metrics.get("epochs_run", len(r.history) or None),
    "train_acc": lambda r: _round(r.metrics.get("train", {}).get("accuracy")),
    "test_acc": lambda r: _round(r.test("accuracy")),
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


def _round(value: float | None, scale: float = 1.0, digits: int = 2) -> float | None:
    return None if value is None else round(value / scale, digits)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table(runs: list[Run], sort: str, descending: bool) -> list[list[Any]]:
    if sort not in COLUMNS:
        raise UserError(f"--sort {sort!r} is not a column; choose one of {', '.join(COLUMNS)}")
    rows = [[get(run) for get in COLUMNS.values()] for run in runs]
    index = list(COLUMNS).index(sort)
    present = [r for r in rows if r[index] is not None]
    missing = [r for r in rows if r[index] is None]  # unfinished runs have no test accuracy: last
    return sorted(present, key=lambda r: r[index], reverse=descending) + missing


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and count of one figure over the seeds of a recipe."""

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


RECIPE_HEADERS = [
    "Recipe",
    "Model",
    "n",
    "Seeds",
    "Epochs",
    "Test accuracy (%)",
    "Reported metric",
    "Reported (%)",
    "Measured (%)",
    "Difference (points)",
    "Reported in",
    "Minutes",
    "Hardware",
    "Status",
    "Note",
]
OFF_BY = 3.0  # points between the measured and the reported figure from which a row shows its note


def recipes(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per recipe: runs that differ only in their seed are one row, their figures as
    mean ± sd over the completed ones (n), in order of the recipe's label."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.recipe, []).append(run)
    entries = []
    for members in groups.values():
        done = [r for r in members if r.status == "completed"]
        first = members[0]
        reported = first.reported
        measured = spread([r.measured(reported["metric"]) for r in done]) if reported else None
        difference = None if measured is None else round(measured.mean - reported["value"], 2)
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
                "test_without_tta": spread([(r.metrics.get("test_without_tta") or {}).get("accuracy") for r in done]),
                "reported_metric": reported and reported["metric"],
                "reported": reported and reported["value"],
                "measured": measured,
                "difference": difference,
                "source": reported and reported["source"],
                "minutes": spread([r.minutes for r in done]),
                "hardware": "; ".join(dict.fromkeys(r.hardware for r in done if r.hardware)) or None,
                "status": ", ".join(f"{count} {status}" for status, count in statuses.items()),
                "note": reported.get("note")
                if reported and difference is not None and abs(difference) > OFF_BY
                else None,
            }
        )
    return sorted(entries, key=lambda e: e["recipe"])


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
            e["reported_metric"],
            e["reported"],
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
        if not own:
            rows.append([model, *report_side, *[None] * (len(MODEL_HEADERS) - 1 - len(report_side))])
        for e in own:
            acc = e["test_acc"]
            against = None if best is None or acc is None else round(acc.mean - best["reported"], 2)
            figures = [show(acc), show(e["test_without_tta"]), against, show(e["epochs"], 1), show(e["minutes"], 1)]
            rows.append([model, *report_side, e["recipe"], e["n"], *figures])
    return rows


def write_recipes_csv(path: Path, entries: list[dict[str, Any]]) -> None:
    """The seeds-aggregated table with each spread as its own mean, sd columns."""
    spreads = ("epochs", "test_acc", "test_without_tta", "measured", "minutes")
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


def plot_overlaid_curves(runs: list[Run], path: Path) -> None:
    # matplotlib here, not at the top: the search's command-line check imports this module's tables
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(13, 5))
    for run in runs:
        if not run.history:
            continue
        epochs = [row["epoch"] for row in run.history]
        label = f"{run.config.get('name', run.model)}/{run.path.name}"
        ax_acc.plot(epochs, [row["val_acc"] for row in run.history], marker=".", label=label)
        ax_loss.plot(epochs, [row["val_loss"] for row in run.history], marker=".", label=label)
    for ax, what in ((ax_acc, "validation accuracy (%)"), (ax_loss, "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    handles, labels = ax_acc.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
        fig.subplots_adjust(bottom=0.12 + 0.04 * ((len(labels) + 2) // 3))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


_SORT_SCRIPT = """
document.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const key = r => { const t = r.cells[col].innerText; const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
}));
"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], status_column: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{html.escape(str(row[status_column]))}'>"
        + "".join(f"<td>{'-' if v is None else html.escape(str(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(
    path: Path,
    runs: list[Run],
    rows: list[list[Any]],
    recipe_rows: list[list[Any]],
    search_rows: list[list[Any]],
    curves: Path,
    heatmaps: list[Path],
) -> None:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>cifarbench report</title><style>",
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;",
        "padding:4px 8px} th{cursor:pointer;background:#eee} tr.failed,tr.diverged{background:#fdd}",
        "tr.unfinished,tr.interrupted,tr.pruned{background:#ffd} img{max-width:100%}</style></head><body>",
        f"<h1>cifarbench report: {len(runs)} runs</h1><p>Click a column header to sort.</p>",
    ]
    if search_rows:
        parts += [
            "<h2>Searches (best trial by validation; its test read once)</h2>",
            _html_table(SEARCH_HEADERS, search_rows, 0),
        ]
    parts += [
        "<h2>Recipes (seeds aggregated: mean ± sd over n completed runs)</h2>",
        _html_table(RECIPE_HEADERS, recipe_rows, RECIPE_HEADERS.index("Status")),
        "<h2>Runs</h2>",
        _html_table([HEADERS[c] for c in COLUMNS], rows, list(COLUMNS).index("status")),
        "<h2>Validation curves</h2>",
        _embed(curves),
    ]
    for heatmap in heatmaps:
        parts += [f"<h2>Sweep heatmap: {html.escape(str(heatmap.parent))}</h2>", _embed(heatmap)]
    parts.append("<h2>Confusion matrices</h2>")
    for run in runs:
        matrix = run.path / "confusion_matrix.png"
        parts.append(f"<h3>{html.escape(run.model)}: {html.escape(str(run.path))} ({html.escape(run.status)})</h3>")
        parts.append(_embed(matrix) if matrix.is_file() else "<p>no confusion matrix (the run did not finish)</p>")
    parts.append(f"<script>{_SORT_SCRIPT}</script></body></html>")
    path.write_text("\n".join(parts))


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


def searches(paths: list[Path]) -> list[list[Any]]:
    """One row per search directory (hydra/sweeper=optuna) under `paths`, read from its summary.csv:
    how its trials ended, and the best trial with the test accuracy the search measured for it."""
    rows = []
    found = {f.parent.resolve() for p in paths for f in [p / "summary.csv", *p.rglob("summary.csv")] if f.is_file()}
    for folder in sorted(found):
        with (folder / "summary.csv").open() as fh:
            trials = list(csv.DictReader(fh))
        if not trials or "trial" not in trials[0]:
            continue  # a grid sweep's summary
        fields = list(trials[0])
        params, objective = fields[1 : fields.index("status")], fields[fields.index("status") + 1]
        statuses = [t["status"] for t in trials]
        tested = [t for t in trials if t.get("test_acc")]
        best = tested[0] if tested else None
        rows.append(
            [
                str(folder),
                len(trials),
                statuses.count("completed"),
                statuses.count("pruned"),
                sum(s in ("failed", "diverged", "fail") for s in statuses),
                best["trial"] if best else None,
                " ".join(f"{k}={best[k]}" for k in params) if best else None,
                f"{objective} {best[objective]}" if best else None,
                best["test_acc"] if best else None,
            ]
        )
    return rows


def report_markdown(
    rows: list[list[Any]], entries: list[dict], search_rows: list[list[Any]], command: str, unmeasured: list | None
) -> str:
    """The tables: the recipes (seeds aggregated; the reports' experiments apart from other recipes,
    and each model's report figure against cifarbench's recipes, when there are both), the searches
    (if any), with `unmeasured` the report presets that could not run here, and every run."""
    text = (
        f"Generated by `{command}`.\n\n"
        f"Runs that differ only in their seed are one row: mean ± sd over the n completed runs. 'Measured' is "
        f"the figure the report gives (test accuracy, or the validation accuracy of the tested epoch); "
        f"'Difference' is measured minus reported. A note explains rows more than {OFF_BY:g} points off.\n\n"
    )
    reports = [e for e in entries if e["reports_experiment"]]
    others = [e for e in entries if not e["reports_experiment"]]
    if reports and others:
        text += "## The reports' experiments\n\n" + markdown_table(RECIPE_HEADERS, recipe_table(reports))
        text += (
            "\n## cifarbench's recipes\n\nRecipes of cifarbench's own (presets not named after a report, "
            "searches), against the report's best figure for the same model where their preset names it.\n\n"
            + markdown_table(RECIPE_HEADERS, recipe_table(others))
        )
        text += (
            "\n## Each model: the report's best against cifarbench's recipes\n\nFor each model, the highest "
            "figure its report gives among the report's experiments above (a test accuracy where there is one, "
            "else a validation accuracy), with this project's measurement of that recipe, beside every recipe "
            "of cifarbench's own for the model; n counts its completed runs. 'Against the reported' is "
            "cifarbench's mean test accuracy (with TTA where the recipe has it; the figure without it beside) "
            "minus the report's figure.\n\n" + markdown_table(MODEL_HEADERS, model_table(entries))
        )
    else:
        text += "## Recipes\n\n" + markdown_table(RECIPE_HEADERS, recipe_table(entries))
    if search_rows:
        text += (
            "\n## Searches\n\nThe best trial of each search is chosen on its objective (validation) and is the "
            "only trial whose test set was read; the other trials are left out of the tables above and below.\n\n"
            + markdown_table(SEARCH_HEADERS, search_rows)
        )
    if unmeasured:
        text += (
            "\n## Not measurable here\n\nThese presets start from ImageNet weights, which cannot be downloaded "
            "on this project's machines (no internet); where the weights download, the command runs them.\n\n"
            + markdown_table(["Preset", "The report's figure", "Reported in", "Command"], unmeasured)
        )
    return text + "\n## Runs\n\n" + markdown_table([HEADERS[c] for c in COLUMNS], rows)


def unmeasured_presets(runs: list[Run]) -> list[list[Any]]:
    """The reports' presets that start from ImageNet weights (model.weights) and have no completed
    run among `runs`, with the command that runs each."""
    from hydra import compose, initialize_config_dir

    from cifarbench.config import config_dir, group_options, register_resolvers

    measured = {run.preset for run in runs if run.status == "completed"}
    rows = []
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for name in group_options("experiment"):
            if not REPORT_PRESET.match(name) or name in measured:
                continue
            cfg = compose("config", overrides=[f"experiment={name}"])
            if str(cfg.model.get("weights", "none")) in ("none", "None"):
                continue
            figure = cfg.get("reported") or {}
            value = figure.get("value")
            shown = "-" if value is None else f"{figure.get('metric')} {value}"
            rows.append([name, shown, figure.get("source", "-"), f"`cifarbench train experiment={name}`"])
    return rows


def write_report(
    paths: list[Path],
    out: Path,
    sort: str = "test_acc",
    descending: bool = True,
    markdown: Path | None = None,
    command: str = "cifarbench report",
) -> list[Path]:
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
    runs = find_runs(paths)
    if not runs:
        raise UserError(f"no run directories under {', '.join(map(str, paths))}")
    listed = [run for run in runs if not run.untested_trial]  # a search's other trials: in its own table
    rows = table(listed, sort, descending)
    entries = recipes(listed)
    search_rows = searches(paths)
    if markdown is not None:  # only the tables, e.g. docs/results.md
        text = report_markdown(rows, entries, search_rows, command, unmeasured_presets(runs))
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
        return [markdown]
    text = report_markdown(rows, entries, search_rows, command, None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    write_csv(out / "report.csv", [HEADERS[c] for c in COLUMNS], rows)
    write_recipes_csv(out / "recipes.csv", entries)
    plot_overlaid_curves(listed, out / "curves.png")
    heatmaps = sorted({h for p in paths for h in ([p / "heatmap.png", *list(p.rglob("heatmap.png"))]) if h.is_file()})
    write_html(out / "report.html", listed, rows, recipe_table(entries), search_rows, out / "curves.png", heatmaps)
    return [out / name for name in ("report.md", "report.csv", "recipes.csv", "curves.png", "report.html")]
