"""The summary a sweep writes at its root when its jobs end (a Hydra callback, conf/config.yaml).

summary.csv and summary.md: one row per job with the swept values and the test results (failed
jobs included, with their error); with exactly two swept parameters also the grid in the shape of
004's Table 2 and heatmap.png.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifarbench import record
from cifarbench.files import DiskFull, save_figure, write_csv, write_text_atomic
from cifarbench.report.recipes import RECIPE_HEADERS, recipe_table, recipes, write_recipes_csv
from cifarbench.runs import Run, load_run
from cifarbench.search.space import is_search
from cifarbench.tables import markdown_table, spread

log = logging.getLogger("cifarbench")


def _overrides(run: Run) -> dict[str, str]:
    return dict(o.split("=", 1) for o in run.overrides if "=" in o)


def _value(text: str) -> Any:
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text


def write_summary(sweep_dir: Path) -> list[Run]:
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / ".hydra").is_dir()),
        key=lambda p: int(p.name),
    )
    runs = [load_run(job) for job in jobs]
    values = [_overrides(run) for run in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    swept = [k for k in keys if len({v.get(k) for v in values}) > 1]
    headers = [
        "job",
        *swept,
        "status",
        "test_acc",
        "test_loss",
        "test_error",
        "f1_macro",
        "epochs",
        "median_epoch_s",
        "dataset",  # added after the columns scripts already read by position
        "top5_acc",
        "error",
    ]
    rows = []
    for run, job_values in zip(runs, values, strict=True):
        test = run.metrics.get("test") or {}
        rows.append(
            [
                run.path.name,
                *(job_values.get(k) for k in swept),
                run.status,
                test.get("accuracy"),
                test.get("loss"),
                test.get("error"),
                test.get("f1_macro"),
                run.metrics.get("epochs_run"),
                run.metrics.get("median_epoch_seconds"),
                run.dataset,
                test.get("top5_accuracy"),  # recorded from 11 classes on
                run.metrics.get("error"),
            ]
        )
    write_csv(sweep_dir / "summary.csv", headers, rows)
    text = f"# Sweep {sweep_dir}\n\n{len(runs)} jobs; swept: {', '.join(swept) or 'nothing'}\n\n"
    text += markdown_table(headers, [[_fmt(v) for v in row] for row in rows])
    if "seed" in swept:  # runs that differ only in their seed: one row, mean ± sd
        entries = recipes(runs)
        text += "\n## Seeds aggregated\n\n" + markdown_table(RECIPE_HEADERS, recipe_table(entries))
        write_recipes_csv(sweep_dir / "summary_recipes.csv", entries)
    if len([k for k in swept if k != "seed"]) == 2:
        text += "\n" + grid(sweep_dir, [k for k in swept if k != "seed"], values, runs)
    write_text_atomic(sweep_dir / "summary.md", text)
    return runs


def _fmt(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def grid(sweep_dir: Path, swept: list[str], values: list[dict[str, str]], runs: list[Run]) -> str:
    """004's Table 2 shape (one row per combination, sorted) and a heatmap of test accuracy."""
    first, second = swept
    firsts = sorted({v[first] for v in values}, key=_value)
    seconds = sorted({v[second] for v in values}, key=_value)
    by_cell: dict[tuple[str, str], list[Run]] = {}
    for v, run in zip(values, runs, strict=True):
        by_cell.setdefault((v[first], v[second]), []).append(run)
    rows, accuracy = [], np.full((len(firsts), len(seconds)), np.nan)
    for i, a in enumerate(firsts):
        for j, b in enumerate(seconds):
            cell = by_cell.get((a, b), [])  # several runs with seeds swept too: their mean
            acc, loss = (spread([run.test(key) for run in cell]) for key in ("accuracy", "loss"))
            acc, loss = (None if s is None else s.mean for s in (acc, loss))
            status = cell[-1].status if cell else "not run"
            rows.append([a, b, status if acc is None else f"{acc:.2f}%", "-" if loss is None else f"{loss:.3f}"])
            if acc is not None:
                accuracy[i, j] = acc
    fig, ax = plt.subplots(figsize=(1.6 * len(seconds) + 2.5, 1.2 * len(firsts) + 1.8))
    image = ax.imshow(accuracy, cmap="viridis")
    ax.set_xticks(range(len(seconds)), seconds)
    ax.set_yticks(range(len(firsts)), firsts)
    ax.set_xlabel(second)
    ax.set_ylabel(first)
    for i in range(len(firsts)):
        for j in range(len(seconds)):
            missing = np.isnan(accuracy[i, j])
            text = "no result" if missing else f"{accuracy[i, j]:.2f}%"
            ax.text(j, i, text, ha="center", va="center", color="white" if missing else "black")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set_title("Test accuracy")
    fig.tight_layout()
    save_figure(fig, sweep_dir / "heatmap.png", dpi=100)
    plt.close(fig)
    return "## Grid\n\n" + markdown_table([first, second, "Test accuracy", "Test loss"], rows)


class SweepSummary(Callback):
    """Rewrites the summary after every job, so an interrupted sweep still has one, and once more
    at the end, where failed jobs also set a non-zero exit status."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN and not is_search(HydraConfig.get().sweeper):
            try:
                write_summary(Path(HydraConfig.get().runtime.output_dir).parent)
            except DiskFull as full:  # the jobs' own files matter more; the summary is written again at the end
                log.warning("sweep summary not updated: %s", full)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or is_search(config.hydra.sweeper):  # the search writes its own summary
            return
        try:
            runs = write_summary(sweep_dir)
        except DiskFull as full:
            print(
                f"cifarbench: error: sweep summary not written: {full}; free some space and run the "
                "sweep's command again with its hydra.sweep.dir (finished jobs are kept)",
                file=sys.stderr,
            )
            sys.exit(1)
        failed = [run for run in runs if run.status != record.COMPLETED]
        print(f"sweep summary: {sweep_dir / 'summary.md'} ({len(runs) - len(failed)} of {len(runs)} jobs completed)")
        if failed:
            summary = sweep_dir / "summary.md"
            print(f"cifarbench: {len(failed)} of {len(runs)} jobs failed; see {summary}", file=sys.stderr)
            sys.exit(1)
