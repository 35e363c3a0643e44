"""The search loop: ask the study for trials, launch each batch through Hydra's launcher, tell the
study how they ended, and write the summary; at the end, the best trial's test (best_trial.py)."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cifarbench import record
from cifarbench.config import instantiate
from cifarbench.errors import UserError
from cifarbench.runs import TRIAL_ENV, Run, load_run
from cifarbench.search.best_trial import finish_best_trial
from cifarbench.search.space import checked_space, sweeper_params
from cifarbench.search.study import (
    best_test_accuracy,
    count_finished,
    same_search,
    state_counts,
    study_storage,
    trials,
    unfinished,
    waiting,
)
from cifarbench.search.summary import objective, params_text, write_search_summary
from cifarbench.search.workers import Heartbeat, claim, mark_surplus, stale, take_over, within_budget, worker_name
from cifarbench.stopping import BestTracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cifarbench")

FAILURES_BEFORE_GIVING_UP = 3  # trials failing before any completes: a broken config or setup, not bad luck
POLL_SECONDS = 5.0  # a worker with nothing to run looks at the study this often


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
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = study_storage(self.sweeper.storage, self.sweep_dir)  # reachable, or one line before any trial
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.sweeper.study_name,
            storage=storage,
            pruner=instantiate(self.sweeper.pruner),
            direction=self.sweeper.direction or ("minimize" if BestTracker(monitor).minimize else "maximize"),
            load_if_exists=True,
        )
        same_search(study, space, monitor, self.sweep_dir)
        earlier_trials = len(study.get_trials(deepcopy=False))
        study.sampler = self._sampler(earlier_trials)
        if not earlier_trials and claim(self.sweep_dir, "enqueued"):  # e.g. the report's own best setting, first
            for setting in self.sweeper.enqueue:
                study.enqueue_trial(setting)
        n_trials, n_jobs = int(self.sweeper.n_trials), self._n_jobs()
        log.info(
            "search %s: %d trials in the study (%d finished), %d at a time in this worker (%s), objective %s (%s), "
            "pruner %s",
            self.sweep_dir,
            n_trials,
            count_finished(study),
            n_jobs,
            worker_name(),
            monitor,
            study.direction.name.lower(),
            type(study.pruner).__name__,
        )
        heartbeat = Heartbeat(study, float(self.sweeper.heartbeat_seconds))
        try:
            self._work(study, space, n_trials, n_jobs, heartbeat)
        finally:
            heartbeat.release()  # a clean stop (Ctrl-C, SIGTERM, an error) frees its trials at once
        self._finish(study, monitor)

    def _work(self, study: optuna.Study, space: Any, n_trials: int, n_jobs: int, heartbeat: Heartbeat) -> None:
        """Run trials until the study has no more to give: stale ones first (taken over, resumed),
        then new ones within the budget; with nothing to run, wait while others' trials run, as one
        of them may go stale."""
        monitor = str(self.config.monitor)
        while True:
            batch = self._take_over_stale(study, n_jobs, heartbeat)
            while len(batch) < n_jobs and (len(trials(study)) < n_trials or waiting(study)):
                trial = study.ask(space.distributions)
                if not within_budget(study, trial.number, n_trials):  # another worker took the last one
                    mark_surplus(study, trial._trial_id)
                    break
                heartbeat.add(trial._trial_id)
                batch.append(PlannedTrial(trial.number, trial._trial_id, trial.params))
            if batch:
                self._launch(study, batch, space.fixed)
                for planned in batch:
                    heartbeat.done(planned.trial_id)
                write_search_summary(self.sweep_dir, study, monitor)
                counts = state_counts(study)
                if counts.get("FAIL", 0) >= min(n_trials, FAILURES_BEFORE_GIVING_UP) and not (
                    counts.get("COMPLETE") or counts.get("PRUNED")
                ):
                    log.error("search: stopped: its first trials all failed (see each trial's train.log)")
                    return
                continue
            if not unfinished(study):
                return
            # others' trials run; one may go stale, or the last may end (then this worker is done)
            time.sleep(min(float(self.sweeper.heartbeat_seconds), POLL_SECONDS))

    def _take_over_stale(self, study: optuna.Study, n_jobs: int, heartbeat: Heartbeat) -> list[PlannedTrial]:
        """Stale trials (their worker stopped or was killed) this worker claims: one that ended but
        was never told is told now; the others are resumed from their checkpoint, same number."""
        batch: list[PlannedTrial] = []
        for trial in stale(study, float(self.sweeper.stale_after_seconds)):
            if len(batch) >= n_jobs or not take_over(self.sweep_dir, trial):
                continue
            run_dir = self.sweep_dir / str(trial.number)
            if run_dir.is_dir() and load_run(run_dir).status in record.ENDED:
                _tell(study, trial.number, load_run(run_dir), str(self.config.monitor))
                continue
            log.info("search: taking over trial %d (its worker stopped); it resumes from its checkpoint", trial.number)
            heartbeat.add(trial._trial_id)
            batch.append(PlannedTrial(trial.number, trial._trial_id, trial.params))
        return batch

    def _finish(self, study: optuna.Study, monitor: str) -> None:
        """The best trial's test, read once for the study: here when this worker sees the study's
        last trial finished, else left to the worker that does (or to `cifarbench search finish`)."""
        still_open = unfinished(study)
        if still_open:
            write_search_summary(self.sweep_dir, study, monitor)
            print(
                f"search: this worker is done; trials {', '.join(str(t.number) for t in still_open)} run in other "
                f"workers, and the one that finishes last tests the best trial (or: cifarbench search finish "
                f"{self.sweep_dir})"
            )
            return
        report_finished_study(self.sweep_dir, study, monitor)

    def _sampler(self, earlier_trials: int) -> optuna.samplers.BaseSampler:
        """The configured sampler. A seeded one is moved on by the trials the study has (a resumed
        search would otherwise ask again for the trials it asked for first) and by this worker's slot
        (workers started together would otherwise ask for the same ones); the first worker of a new
        search keeps the seed as given."""
        config = OmegaConf.create(OmegaConf.to_container(self.sweeper.sampler))
        if config.get("seed") is not None:
            slot = next(i for i in range(10_000) if claim(self.sweep_dir, f"worker.{i}"))
            config.seed = int(config.seed) + earlier_trials + 1000 * slot
        return instantiate(config)

    def _n_jobs(self) -> int:
        """Trials launched together: the sweeper's n_jobs, or the parallel launcher's."""
        if self.sweeper.n_jobs:
            return int(self.sweeper.n_jobs)
        launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
        if launcher_jobs is None or int(launcher_jobs) < 1:
            return 1 if launcher_jobs is None else max(1, os.cpu_count() or 1)
        return int(launcher_jobs)

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
    try:
        if value is not None:
            study.tell(number, value)
        elif run.status == record.PRUNED:
            study.tell(number, state=TrialState.PRUNED)
        else:
            study.tell(number, state=TrialState.FAIL)
    except (ValueError, RuntimeError) as exc:  # told already: by a worker that took it over meanwhile
        log.warning("search: trial %d was told by another worker already (%s)", number, exc)


def report_finished_study(sweep_dir: Path, study: optuna.Study, monitor: str) -> None:
    """The end of a study whose trials have all finished: its best trial tested (once, whichever
    process gets there first: the last worker, or `cifarbench search finish`), summary and plots."""
    best = finish_best_trial(sweep_dir, study)
    write_search_summary(sweep_dir, study, monitor, plots=True)
    counts = state_counts(study)
    print(
        f"search summary: {sweep_dir / 'summary.md'} ({counts.get('COMPLETE', 0)} completed, "
        f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed)"
    )
    if best is None:
        print("cifarbench: no trial of the search completed; see summary.md", file=sys.stderr)
        sys.exit(1)
    accuracy = best_test_accuracy(study, best.number)
    tested = "being read by another process" if accuracy is None else f"{accuracy:.2f}%"
    print(
        f"best trial {best.number}: {params_text(best.params)}; {monitor} {best.value:.4f} (the objective); "
        f"test accuracy {tested} (the test set read once, for this trial only)"
    )


def finish_search(sweep_dir: Path, storage: str | None, study_name: str) -> None:
    """`cifarbench search finish`: the end of a study whose workers are gone, from any machine that
    reaches its storage and its sweep directory; refused while trials still run."""
    import optuna

    from cifarbench.search.study import MONITOR_ATTR

    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory; give the search's hydra.sweep.dir")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=study_storage(storage, sweep_dir))
    except KeyError:
        raise UserError(f"no study named {study_name!r} in that storage; give --study-name as the search's") from None
    still_open = unfinished(study)
    if still_open:
        raise UserError(
            f"trials {', '.join(str(t.number) for t in still_open)} have not finished; let their workers end them "
            "(a trial whose worker is gone is taken over by the next worker started with the search's command)"
        )
    report_finished_study(sweep_dir, study, str(study.user_attrs.get(MONITOR_ATTR, "val_acc")))
