"""The job's side of a search trial: report the monitored figure after each epoch, stop when pruned.

Runs inside the trial's training job (train_job.py), which hands `TrialPruning.after_epoch` to the
training loop as its epoch hook; the loop itself knows nothing of searches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cifarbench.config import instantiate
from cifarbench.errors import Pruned
from cifarbench.runs import TRIAL_ENV
from cifarbench.search.study import study_storage

if TYPE_CHECKING:
    import optuna


class TrialPruning:
    """Reports the monitored figure after every epoch, and stops the run (errors.Pruned) when the
    study's pruner says it will not catch up."""

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
