"""`cifarbench report PATH...`: the comparison table of 000's Table 1, overlaid curves, one HTML page.

Tables are built from the runs' own files (runs.py); plots come from matplotlib.
"""

from __future__ import annotations

import base64
import csv
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cifarbench.errors import UserError
from cifarbench.runs import Run, find_runs

# Column name -> how to get it from a run. The shape of 000's Table 1, plus F1, status and the run.
COLUMNS: dict[str, Any] = {
    "model": lambda r: r.model,
    "params_m": lambda r: _round(r.metrics.get("params", {}).get("total", None), 1e6, 2),
    "epochs": lambda r: r.metrics.get("epochs_run", len(r.history) or None),
    "train_acc": lambda r: _round(r.metrics.get("train", {}).get("accuracy")),
    "test_acc": lambda r: _round(r.test("accuracy")),
    "test_error": lambda r: _round(r.test("error")),
    "median_epoch_s": lambda r: _round(r.metrics.get("median_epoch_seconds"), 1, 1),
    "fine_tuned": lambda r: "Y" if r.pretrained else "N",
    "f1_macro": lambda r: _round(r.test("f1_macro"), 1, 4),
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


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Atomic (temporary file, then rename): parallel sweep jobs rewrite the same summary."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    os.replace(tmp, path)


def table(runs: list[Run], sort: str, descending: bool) -> list[list[Any]]:
    if sort not in COLUMNS:
        raise UserError(f"--sort {sort!r} is not a column; choose one of {', '.join(COLUMNS)}")
    rows = [[get(run) for get in COLUMNS.values()] for run in runs]
    index = list(COLUMNS).index(sort)
    present = [r for r in rows if r[index] is not None]
    missing = [r for r in rows if r[index] is None]  # unfinished runs have no test accuracy: last
    return sorted(present, key=lambda r: r[index], reverse=descending) + missing


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


def write_html(path: Path, runs: list[Run], rows: list[list[Any]], curves: Path, heatmaps: list[Path]) -> None:
    head = "".join(f"<th>{html.escape(HEADERS[c])}</th>" for c in COLUMNS)
    body = "".join(
        "<tr class='{}'>".format(html.escape(str(row[list(COLUMNS).index("status")])))
        + "".join(f"<td>{'-' if v is None else html.escape(str(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>cifarbench report</title><style>",
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;",
        "padding:4px 8px} th{cursor:pointer;background:#eee} tr.failed,tr.diverged{background:#fdd}",
        "tr.unfinished,tr.interrupted{background:#ffd} img{max-width:100%}</style></head><body>",
        f"<h1>cifarbench report: {len(runs)} runs</h1><p>Click a column header to sort.</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
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


def write_report(paths: list[Path], out: Path, sort: str = "test_acc", descending: bool = True) -> list[Path]:
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
    runs = find_runs(paths)
    if not runs:
        raise UserError(f"no run directories under {', '.join(map(str, paths))}")
    rows = table(runs, sort, descending)
    out.mkdir(parents=True, exist_ok=True)
    headers = [HEADERS[c] for c in COLUMNS]
    (out / "report.md").write_text(markdown_table(headers, rows))
    write_csv(out / "report.csv", headers, rows)
    plot_overlaid_curves(runs, out / "curves.png")
    heatmaps = sorted({h for p in paths for h in ([p / "heatmap.png", *list(p.rglob("heatmap.png"))]) if h.is_file()})
    write_html(out / "report.html", runs, rows, out / "curves.png", heatmaps)
    return [out / name for name in ("report.md", "report.csv", "curves.png", "report.html")]
