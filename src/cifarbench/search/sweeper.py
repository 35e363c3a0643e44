"""The search loop: ask the study for trials, launch each batch through Hydra's launcher, tell the
study how they ended, and write the summary; at the end, the best trial's test (best_trial.py)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cifarbench import record
from cifarbench.config import instantiate
from cifarbench.runs import TRIAL_ENV, Run, load_run
from cifarbench.search.best_trial import finish_best_trial
from cifarbench.search.space import checked_space, sweeper_params
from cifarbench.search.study import (
    best_test_accuracy,
    count_finished,
    running,
    same_search,
    state_counts,
    study_storage,
)
from cifarbench.search.summary import objective, params_text, write_search_summary
from cifarbench.stopping import BestTracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cifarbench")

FAILURES_BEFORE_GIVING_UP = 3  # trials failing before any completes: a broken config or setup, not bad luck


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
        same_search(study, space, monitor, self.sweep_dir)
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
            count_finished(study),
            n_jobs,
            monitor,
            study.direction.name.lower(),
            type(study.pruner).__name__,
        )
        while pending or count_finished(study) + len(running(study)) < n_trials:
            batch = pending[:n_jobs]
            pending = pending[n_jobs:]
            room = n_trials - count_finished(study) - len(running(study))
            for _ in range(min(n_jobs - len(batch), room)):
                trial = study.ask(space.distributions)
                batch.append(PlannedTrial(trial.number, trial._trial_id, trial.params))
            if not batch:
                break
            self._launch(study, batch, space.fixed)
            write_search_summary(self.sweep_dir, study, monitor)
            counts = state_counts(study)
            if counts.get("FAIL", 0) >= min(n_trials, FAILURES_BEFORE_GIVING_UP) and not (
                counts.get("COMPLETE") or counts.get("PRUNED")
            ):
                log.error("search: stopped: its first trials all failed (see each trial's train.log)")
                break
        best = finish_best_trial(self.sweep_dir, study)
        write_search_summary(self.sweep_dir, study, monitor, plots=True)
        counts = state_counts(study)
        print(
            f"search summary: {self.sweep_dir / 'summary.md'} ({counts.get('COMPLETE', 0)} completed, "
            f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed)"
        )
        if best is None:
            print("cifarbench: no trial of the search completed; see summary.md", file=sys.stderr)
            sys.exit(1)
        print(
            f"best trial {best.number}: {params_text(best.params)}; {monitor} {best.value:.4f} (the objective); "
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
        for trial in running(study):
            run_dir = self.sweep_dir / str(trial.number)
            if run_dir.is_dir() and load_run(run_dir).status in record.ENDED:
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


def _tell(study: optuna.Study, number: int, run: Run, monitor: str) -> None:
    from optuna.trial import TrialState

    value = objective(run, monitor) if run.status == record.COMPLETED else None
    if value is not None:
        study.tell(number, value)
    elif run.status == record.PRUNED:
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, state=TrialState.FAIL)
