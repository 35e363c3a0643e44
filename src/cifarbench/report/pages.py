"""The report's pictures: validation curves of every run overlaid (matplotlib), and one HTML page."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from cifarbench.files import save_figure, write_text_atomic
from cifarbench.report.columns import COLUMNS, RUN_HEADERS
from cifarbench.report.recipes import RECIPE_HEADERS
from cifarbench.report.searches import SEARCH_HEADERS
from cifarbench.runs import Run


def plot_overlaid_curves(runs: list[Run], path: Path) -> None:
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
    save_figure(fig, path, dpi=100)
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
        _html_table(RUN_HEADERS, rows, list(COLUMNS).index("status")),
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
    write_text_atomic(path, "\n".join(parts))
