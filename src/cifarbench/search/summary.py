"""A search's summary: summary.csv/.md (one row per trial) and Optuna's plots, and reading it back.

The summary is written after every batch of trials, so an interrupted search still has one, and
once more with the plots at the end. `overview` reads it back for `cifarbench report`.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from cifarbench import record
from cifarbench.files import save_figure, write_csv, write_text_atomic
from cifarbench.runs import Run, load_run, short_number
from cifarbench.search.study import best, best_test_accuracy, tested_trials
from cifarbench.search.study import trials as counted_trials
from cifarbench.tables import markdown_table

if TYPE_CHECKING:
    import optuna

SUMMARY_CSV = "summary.csv"
# after the trial number and its parameters: the columns every summary.csv of a search ends with
# ("objective" stands for the monitored figure's own name, e.g. val_acc)
TRAILING = ("status", "objective", "epochs", "test_acc", "run_dir")
# Optuna's trial states, for a trial whose run directory does not (yet) say how it ended
TRIAL_STATES = {"COMPLETE": record.COMPLETED, "PRUNED": record.PRUNED, "FAIL": record.FAILED}


def objective(run: Run, monitor: str) -> float | None:
    """The trial's objective: the monitored validation figure of the epoch whose weights it would
    test (test_weights: the best epoch's or the last's)."""
    return run.validation(monitor)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k.lstrip('+')}={short_number(v)}" for k, v in params.items())


def write_search_summary(sweep_dir: Path, study: optuna.Study, monitor: str, plots: bool = False) -> None:
    """summary.csv/.md: one row per trial (parameters, status, objective, epochs, test accuracy of the
    best trial only) and, with `plots`, Optuna's plots as PNG (matplotlib backend)."""
    trials = counted_trials(study)  # a worker's surplus asks are not trials of the search
    chosen = best(study)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    headers = ["trial", *(k.lstrip("+") for k in keys), "status", monitor, "epochs", "test_acc", "run_dir"]
    rows = []
    for trial in trials:
        run_dir = sweep_dir / str(trial.number)
        run = load_run(run_dir) if run_dir.is_dir() else None
        status = run.status if run is not None else record.UNFINISHED
        if status == record.UNFINISHED:
            status = TRIAL_STATES.get(trial.state.name, record.UNFINISHED)
        value = None
        if run is not None:  # a pruned trial: the figure it was stopped on
            value = objective(run, monitor) if run.status == record.COMPLETED else _last(run.history, monitor)
        rows.append(
            [
                trial.number,
                *(short_number(trial.params.get(k)) for k in keys),
                status,
                None if value is None else round(value, 4),
                run.metrics.get("epochs_run", len(run.history)) if run is not None else None,
                _round(best_test_accuracy(study, trial.number) if chosen and trial.number == chosen.number else None),
                str(run_dir),
            ]
        )
    write_csv(sweep_dir / SUMMARY_CSV, headers, rows)
    text = f"# Search {sweep_dir}\n\n"
    text += (
        f"Study `{study.study_name}`; objective: {monitor} "
        f"({study.direction.name.lower()}), the validation set; the test set is read for the best trial only.\n\n"
    )
    if chosen is None:
        text += "No trial has completed yet.\n\n"
    else:
        test = best_test_accuracy(study, chosen.number)
        text += (
            f"**Best trial {chosen.number}**: {params_text(chosen.params)}; {monitor} {chosen.value:.4f}"
            + (f"; test accuracy **{test:.2f}%**" if test is not None else "; not tested yet")
            + f" ({sweep_dir / str(chosen.number)})\n\n"
        )
    tested = tested_trials(study)
    if len(tested) > 1:  # the search was continued after its end and found a new best
        text += (
            "The test set was read for: "
            + ", ".join(
                f"trial {t['trial']} ({t['test_accuracy']:.2f}%, the best after {t['after_trials']} trials)"
                for t in tested
            )
            + ".\n\n"
        )
    text += markdown_table(headers[:-1], [row[:-1] for row in rows])
    if plots:
        text += "\n" + write_plots(sweep_dir, study)
    write_text_atomic(sweep_dir / "summary.md", text)


def _last(history: list[dict], key: str) -> float | None:
    return history[-1].get(key) if history else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def write_plots(sweep_dir: Path, study: optuna.Study) -> str:
    """Optuna's own plots through its matplotlib backend; each needs enough finished trials."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    # a choice() of numbers is a categorical axis: matplotlib would log that at INFO into every job log
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    plots = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
        "slice.png": optuna_plots.plot_slice,
        "param_importances.png": optuna_plots.plot_param_importances,
    }
    written, skipped = [], []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
                optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials": said in summary.md
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of one trial
            skipped.append(f"{name} ({str(exc).splitlines()[0][:80]})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        save_figure(figure, sweep_dir / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    text = "## Plots\n\n" + "".join(f"![{n}]({n})\n" for n in written)
    if skipped:
        text += "\nNot drawn: " + "; ".join(skipped) + "\n"
    return text


def is_search_dir(folder: Path) -> bool:
    """Whether `folder` is a search's sweep directory: its job directories are search trials (each
    one's Hydra record sets the trial's id), whatever its summary looks like."""
    jobs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return any(load_run(job).trial for job in jobs)


def overview(folder: Path) -> dict[str, Any] | None:
    """A search directory's summary.csv in brief: how its trials ended, and the best trial (the one
    whose test was read) with its parameters, objective and test accuracy. None without trials."""
    with (folder / SUMMARY_CSV).open() as fh:
        trials = list(csv.DictReader(fh))
    if not trials:
        return None
    fields = list(trials[0])
    params, objective_name = fields[1 : -len(TRAILING)], fields[-len(TRAILING) + 1]
    # Optuna's own state names stand in summaries written before the record's statuses ("fail")
    statuses = [TRIAL_STATES.get(t["status"].upper(), t["status"]) for t in trials]
    tested = [t for t in trials if t.get("test_acc")]
    chosen = tested[0] if tested else None
    return {
        "search": str(folder),
        "trials": len(trials),
        "completed": statuses.count(record.COMPLETED),
        "pruned": statuses.count(record.PRUNED),
        "failed": sum(s in (record.FAILED, record.DIVERGED) for s in statuses),
        "best_trial": chosen and chosen["trial"],
        "params": chosen and " ".join(f"{k}={chosen[k]}" for k in params),
        "objective": chosen and f"{objective_name} {chosen[objective_name]}",
        "test_acc": chosen and chosen["test_acc"],
    }
