"""Hyperparameter search with pruning: what `hydra/sweeper=optuna` runs (conf/hydra/sweeper/optuna.yaml).

    cifarbench train -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 'model.dropout=interval(0,0.6)' \
        'batch_size=choice(64,128,256)' 'optimizer.lr=tag(log,interval(1e-4,1e-2))'

The sweeper (hydra_plugins/cifarbench_optuna_sweeper, a thin Hydra plugin) hands its arguments to
`Search.run`, which asks an Optuna study for trials and launches each as a normal job of the sweep
through Hydra's launcher: one run directory per trial, named by the trial's number. Each trial
reports its monitored validation figure after every epoch (`TrialPruning`, called from
train.run_epochs) and ends `pruned` when the study's pruner says so. Trials never read the test set:
the best trial (by validation) is tested once, when the search ends.

The study lives in `<sweep dir>/optuna.db` (or `storage`, a database URL), so the same command with
the same `hydra.sweep.dir` continues an interrupted search: finished trials stay, interrupted ones
resume from their last.pt, and only the missing trials are asked for. One search process works on
a study at a time (with joblib, its trials run in parallel): at its start, trials left RUNNING are
taken to be interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import DictConfig, OmegaConf

from cifarbench.config import instantiate
from cifarbench.errors import Pruned, UserError, import_extra
from cifarbench.files import write_csv, write_text_atomic
from cifarbench.report import markdown_table
from cifarbench.runs import TRIAL_ENV, WHERE_AND_HOW, Run, load_run, short_number
from cifarbench.stopping import BestTracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cifarbench")

STUDY_FILE = "optuna.db"
SWEEPER_MODULE = "hydra_plugins.cifarbench_optuna_sweeper"
SEARCH_SPACE_ATTR = "cifarbench_search"  # the study remembers what it searches, to refuse another search
BEST_TESTED_ATTR = "cifarbench_tested"  # [{trial, test_accuracy, after_trials}]: trials whose test was read
FINAL_STATUSES = ("completed", "pruned", "failed", "diverged")
FAILURES_BEFORE_GIVING_UP = 3  # trials failing before any completes: a broken config or setup, not bad luck


def is_search(sweeper: DictConfig) -> bool:
    """Whether Hydra's sweeper (hydra.sweeper) is this search rather than the grid sweeper."""
    return str(sweeper.get("_target_", "")).startswith(SWEEPER_MODULE)


def require_optuna() -> None:
    import_extra("optuna", "optuna", "hydra/sweeper=optuna")


def study_storage(storage: str | None, sweep_dir: Path) -> optuna.storages.RDBStorage:
    """The study's storage: `storage` (a database URL) as given, or a sqlite file in the sweep
    directory. sqlite waits up to a minute for a lock, so parallel trials reporting at the same
    moment queue up instead of failing with "database is locked"."""
    import optuna

    url = storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


@dataclass
class SearchSpace:
    distributions: dict[str, Any]  # override key (with its + or ++) -> optuna distribution
    expressions: list[str]  # the searched overrides as written, e.g. model.dropout=interval(0,0.6)
    fixed: list[str]  # every other override, passed to every trial as it is


def search_space(arguments: list[str]) -> SearchSpace:
    """`interval(a,b)` -> a float (or integer) range, `tag(log, interval(..))` -> the same on a log
    scale, `choice(..)`, `a,b,c` and `range(..)` -> categorical. A later override of a key replaces
    an earlier one (the command line replaces `hydra.sweeper.params`)."""
    space: dict[str, tuple[Any, Override]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        searched = _distribution(override) if override.is_sweep_override() else None
        space.pop(override.get_key_element(), None)
        space[override.get_key_element()] = (searched, override)
    return SearchSpace(
        distributions={key: d for key, (d, _) in space.items() if d is not None},
        expressions=[o.input_line for d, o in space.values() if d is not None],
        fixed=[o.input_line for d, o in space.values() if d is None],
    )


def _distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """Hydra parses both ends of `interval(a, b)` as floats, so integers are asked for with a tag:
    `tag(int, interval(16, 64))` (the spelling of Hydra's own Optuna sweeper)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    tags = getattr(value, "tags", set())
    where = f"{override.input_line}:"
    if override.is_interval_sweep():
        low, high = value.start, value.end
        if not low < high:
            raise UserError(f"{where} interval(low, high) needs low < high")
        if "log" in tags and low <= 0:
            raise UserError(f"{where} tag(log, interval(low, high)) needs low > 0")
        if "int" in tags:
            if low != int(low) or high != int(high):
                raise UserError(f"{where} tag(int, interval(low, high)) needs whole numbers")
            return IntDistribution(int(low), int(high), log="log" in tags)
        return FloatDistribution(float(low), float(high), log="log" in tags)
    if tags & {"log", "int"}:
        raise UserError(f"{where} tag(log, ...) and tag(int, ...) apply to interval(...) only")
    values = list(override.sweep_iterator())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return CategoricalDistribution(values)
    return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))


def sweeper_params(params: dict[str, Any] | None) -> list[str]:
    """`hydra.sweeper.params` ({key: expression}) as overrides, before the command line's."""
    return [f"{key}={expression}" for key, expression in (params or {}).items()]


def checked_space(arguments: list[str], enqueue: list[dict[str, Any]]) -> SearchSpace:
    """The search space, or a UserError naming what is wrong with it (checked by `cifarbench train`
    before Hydra starts, and again by the sweeper)."""
    space = search_space(arguments)
    if not space.distributions:
        raise UserError("hydra/sweeper=optuna found nothing to search; give e.g. 'model.dropout=interval(0,0.6)'")
    if "monitor" in space.distributions:
        raise UserError("monitor is the search's objective and cannot be searched; set one monitor")
    for setting in enqueue:
        unknown = set(setting) - set(space.distributions)
        if unknown:
            raise UserError(f"hydra.sweeper.enqueue names {', '.join(sorted(unknown))}, which is not searched")
    return space


@dataclass
class PlannedTrial:
    number: int
    trial_id: int
    params: dict[str, Any]


class Search:
    """The search loop of the sweeper: ask, launch a batch of trials, tell, write the summary."""

    def __init__(self, sweeper: Any, config: DictConfig, launcher: Any) -> None:
        self.sweeper = sweeper
        self.config = config
        self.launcher = launcher
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.job_index = 0

    def run(self, arguments: list[str]) -> None:
        import optuna

        space = checked_space([*sweeper_params(self.sweeper.params), *arguments], self.sweeper.enqueue)
        monitor = str(self.config.monitor)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.sweeper.study_name,
            storage=study_storage(self.sweeper.storage, self.sweep_dir),
            pruner=instantiate(self.sweeper.pruner),
            direction=self.sweeper.direction or ("minimize" if BestTracker(monitor).minimize else "maximize"),
            load_if_exists=True,
        )
        _same_search(study, space, monitor, self.sweep_dir)
        earlier_trials = len(study.get_trials(deepcopy=False))
        study.sampler = self._sampler(earlier_trials)
        if not earlier_trials:
            for setting in self.sweeper.enqueue:  # e.g. the report's own best setting, tried first
                study.enqueue_trial(setting)
        pending = self._take_stock(study)
        n_trials, n_jobs = int(self.sweeper.n_trials), self._n_jobs()
        log.info(
            "search %s: %d trials (%d finished before), %d at a time, objective %s (%s), pruner %s",
            self.sweep_dir,
            n_trials,
            _count_finished(study),
            n_jobs,
            monitor,
            study.direction.name.lower(),
            type(study.pruner).__name__,
        )
        while pending or _count_finished(study) + len(_running(study)) < n_trials:
            batch = pending[:n_jobs]
            pending = pending[n_jobs:]
            room = n_trials - _count_finished(study) - len(_running(study))
            for _ in range(min(n_jobs - len(batch), room)):
                trial = study.ask(space.distributions)
                batch.append(PlannedTrial(trial.number, trial._trial_id, trial.params))
            if not batch:
                break
            self._launch(study, batch, space.fixed)
            write_search_summary(self.sweep_dir, study, monitor)
            counts = _state_counts(study)
            if counts.get("FAIL", 0) >= min(n_trials, FAILURES_BEFORE_GIVING_UP) and not (
                counts.get("COMPLETE") or counts.get("PRUNED")
            ):
                log.error("search: stopped: its first trials all failed (see each trial's train.log)")
                break
        best = test_best_trial(self.sweep_dir, study, monitor)
        write_search_summary(self.sweep_dir, study, monitor, plots=True)
        counts = _state_counts(study)
        print(
            f"search summary: {self.sweep_dir / 'summary.md'} ({counts.get('COMPLETE', 0)} completed, "
            f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed)"
        )
        if best is None:
            print("cifarbench: no trial of the search completed; see summary.md", file=sys.stderr)
            sys.exit(1)
        print(
            f"best trial {best.number}: {_params_text(best.params)}; {monitor} {best.value:.4f} (the objective); "
            f"test accuracy {best_test_accuracy(study, best.number):.2f}% (the test set read once, for this trial only)"
        )

    def _sampler(self, earlier_trials: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; when the study has trials already (a resumed search), its seed is
        moved on by their number, or it would ask again for the trials it asked for first."""
        config = OmegaConf.create(OmegaConf.to_container(self.sweeper.sampler))
        if config.get("seed") is not None:
            config.seed = int(config.seed) + earlier_trials
        return instantiate(config)

    def _n_jobs(self) -> int:
        """Trials launched together: the sweeper's n_jobs, or the parallel launcher's."""
        if self.sweeper.n_jobs:
            return int(self.sweeper.n_jobs)
        launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
        if launcher_jobs is None or int(launcher_jobs) < 1:
            return 1 if launcher_jobs is None else max(1, os.cpu_count() or 1)
        return int(launcher_jobs)

    def _take_stock(self, study: optuna.Study) -> list[PlannedTrial]:
        """After an interruption: trials left RUNNING whose job finished are told now; the others
        are resumed (from their last.pt when they have one). Assumes no other process is running
        trials of this study at this moment."""
        pending = []
        for trial in _running(study):
            run_dir = self.sweep_dir / str(trial.number)
            if run_dir.is_dir() and load_run(run_dir).status in FINAL_STATUSES:
                _tell(study, trial.number, load_run(run_dir), str(self.config.monitor))
            else:
                pending.append(PlannedTrial(trial.number, trial._trial_id, trial.params))
        if pending:
            log.info("search: resuming interrupted trials %s", ", ".join(str(t.number) for t in pending))
        return pending

    def _launch(self, study: optuna.Study, batch: list[PlannedTrial], fixed: list[str]) -> None:
        jobs = [
            [
                *fixed,
                *(f"{key}={value}" for key, value in trial.params.items()),  # strings stored encoded
                f"hydra.sweep.subdir={trial.number}",
                f"++hydra.job.env_set.{TRIAL_ENV}={trial.trial_id}",
            ]
            for trial in batch
        ]
        self.launcher.launch(jobs, initial_job_idx=self.job_index)
        self.job_index += len(jobs)
        for trial in batch:
            _tell(study, trial.number, load_run(self.sweep_dir / str(trial.number)), str(self.config.monitor))


def _same_search(study: optuna.Study, space: SearchSpace, monitor: str, sweep_dir: Path) -> None:
    """The first run of a search records what it searches; a later run into the same directory must
    search the same (where and how it runs aside), or it would mix two searches in one study."""
    what = [o for o in space.fixed if not o.lstrip("+~").startswith(WHERE_AND_HOW)]
    searched = " ".join(sorted([*space.expressions, *what, f"monitor={monitor}"]))
    saved = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if saved is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, searched)
    elif saved != searched:
        raise UserError(
            f"{sweep_dir} holds another search ({saved}); run this one into a new hydra.sweep.dir, "
            "or repeat that search's own command to continue it"
        )


def _running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _count_finished(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def _state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def objective(run: Run, monitor: str) -> float | None:
    """The trial's objective: the monitored validation figure of the epoch whose weights it would
    test (test_weights: the best epoch's or the last's)."""
    return run.validation(monitor)


def _tell(study: optuna.Study, number: int, run: Run, monitor: str) -> None:
    from optuna.trial import TrialState

    value = objective(run, monitor) if run.status == "completed" else None
    if value is not None:
        study.tell(number, value)
    elif run.status == "pruned":
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, state=TrialState.FAIL)


class TrialPruning:
    """The job's side of a trial: reports the monitored figure after every epoch, and stops the run
    (errors.Pruned) when the study's pruner says it will not catch up."""

    def __init__(self, trial: optuna.Trial, monitor: str, pruner: str) -> None:
        self.trial, self.monitor, self.pruner = trial, monitor, pruner

    def after_epoch(self, epoch: int, value: float) -> None:
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise Pruned(f"{self.monitor} {value:.4f} after epoch {epoch}: pruned by the search's {self.pruner}")


def trial_pruning(run_dir: Path, monitor: str) -> TrialPruning | None:
    """The pruning hook when this job is a trial of a search (the sweeper set TRIAL_ENV), else None.
    The trial's run directory is `<sweep dir>/<trial number>`, so the study is found beside it."""
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper
    pruner = instantiate(sweeper.pruner)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=sweeper.study_name,
        storage=study_storage(sweeper.storage, run_dir.parent),
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(),  # this side never samples
    )
    return TrialPruning(optuna.trial.Trial(study, int(trial_id)), monitor, type(pruner).__name__)


def test_best_trial(sweep_dir: Path, study: optuna.Study, monitor: str) -> optuna.trial.FrozenTrial | None:
    """Tests the best completed trial (chosen on validation), once: its run directory gets the test
    files every finished run has, and the study remembers it (BEST_TESTED_ATTR). A search continued
    after its end (a larger n_trials) whose best trial changed tests the new best too; the study
    keeps every trial whose test was read, and summary.md lists them."""
    from cifarbench.inference import test_deferred

    best = _best(study)
    if best is None:
        return None
    tested = tested_trials(study)
    if best.number not in {t["trial"] for t in tested}:
        test = test_deferred(sweep_dir / str(best.number))
        record = {"trial": best.number, "test_accuracy": test["accuracy"], "after_trials": _count_finished(study)}
        study.set_user_attr(BEST_TESTED_ATTR, [*tested, record])
    return best


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no trial completed
        return None


def tested_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial whose test set was read: [{trial, test_accuracy, after_trials}], oldest first."""
    return list(study.user_attrs.get(BEST_TESTED_ATTR) or [])


def best_test_accuracy(study: optuna.Study, number: int) -> float | None:
    return next((t["test_accuracy"] for t in tested_trials(study) if t["trial"] == number), None)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k.lstrip('+')}={short_number(v)}" for k, v in params.items())


def write_search_summary(sweep_dir: Path, study: optuna.Study, monitor: str, plots: bool = False) -> None:
    """summary.csv/.md: one row per trial (parameters, status, objective, epochs, test accuracy of the
    best trial only) and, with `plots`, Optuna's plots as PNG (matplotlib backend)."""
    trials = study.get_trials(deepcopy=False)
    best = _best(study)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    headers = ["trial", *(k.lstrip("+") for k in keys), "status", monitor, "epochs", "test_acc", "run_dir"]
    rows = []
    for trial in trials:
        run_dir = sweep_dir / str(trial.number)
        run = load_run(run_dir) if run_dir.is_dir() else None
        status = run.status if run is not None and run.status != "unfinished" else trial.state.name.lower()
        value = None
        if run is not None:  # a pruned trial: the figure it was stopped on
            value = objective(run, monitor) if run.status == "completed" else _last(run.history, monitor)
        rows.append(
            [
                trial.number,
                *(short_number(trial.params.get(k)) for k in keys),
                status,
                None if value is None else round(value, 4),
                run.metrics.get("epochs_run", len(run.history)) if run is not None else None,
                _round(best_test_accuracy(study, trial.number) if best and trial.number == best.number else None),
                str(run_dir),
            ]
        )
    write_csv(sweep_dir / "summary.csv", headers, rows)
    text = f"# Search {sweep_dir}\n\n"
    text += (
        f"Study `{study.study_name}`; objective: {monitor} "
        f"({study.direction.name.lower()}), the validation set; the test set is read for the best trial only.\n\n"
    )
    if best is None:
        text += "No trial has completed yet.\n\n"
    else:
        test = best_test_accuracy(study, best.number)
        text += (
            f"**Best trial {best.number}**: {_params_text(best.params)}; {monitor} {best.value:.4f}"
            + (f"; test accuracy **{test:.2f}%**" if test is not None else "; not tested yet")
            + f" ({sweep_dir / str(best.number)})\n\n"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        figure.savefig(sweep_dir / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    text = "## Plots\n\n" + "".join(f"![{n}]({n})\n" for n in written)
    if skipped:
        text += "\nNot drawn: " + "; ".join(skipped) + "\n"
    return text
