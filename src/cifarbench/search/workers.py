"""What lets several search processes ("workers", on one machine or many) share one study.

Every worker runs the same command against one storage and one sweep directory (a shared disk:
the trials' run directories are `<sweep dir>/<trial number>`, which any worker may need to resume
or test). The study is the source of truth; four rules keep the workers from colliding:

- **the budget**: a worker asks the study for a trial, then keeps it only if its number is among the
  first `n_trials` trials that count (trial numbers are handed out atomically by the storage); a
  surplus trial is marked and told FAIL at once, and counts for nothing (`surplus`).
- **liveness**: each worker writes a heartbeat (a trial user attribute) for its running trials every
  `heartbeat_seconds`; a worker that stops cleanly (Ctrl-C, SIGTERM, an error) releases them at
  once. A RUNNING trial whose heartbeat is older than `stale_after_seconds`, or released, is
  stale: its worker is gone.
- **takeover**: a stale trial is taken over by one worker, keeping its number and run directory (so
  its checkpoint is resumed): the claim is a file created exclusively in the sweep directory
  (`.claims/<trial>.<worker>.<time>`, named by the last heartbeat the trial had, which every worker
  that finds it stale reads alike), which exactly one worker can create. A killed worker that is started
  again takes its own trial back this way once it is stale; so does any other worker.
- **the test, once**: the best trial's test is read by whichever worker sees the study's last trial
  finish, or by `cifarbench search finish`; the same exclusive claim file makes it one of them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cifarbench")

HEARTBEAT_ATTR = "cifarbench_heartbeat"  # [unix time of the last beat, worker]; time 0: released
SURPLUS_ATTR = "cifarbench_surplus"  # a trial asked for beyond n_trials by a worker that lost the race
CLAIMS = ".claims"  # in the sweep directory: one exclusively created file per takeover and per test


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(sweep_dir: Path, name: str) -> bool:
    """True for exactly one of the processes that call it with `name` (O_CREAT | O_EXCL)."""
    folder = sweep_dir / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{worker_name()} {time.time():.0f}\n")
    return True


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards n_trials: all but the surplus ones, by number."""
    return sorted((t for t in trials if not t.user_attrs.get(SURPLUS_ATTR)), key=lambda t: t.number)


def within_budget(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial `number`, just asked for, is among the first n_trials that count."""
    numbers = [t.number for t in counted(study.get_trials(deepcopy=False))]
    return number in numbers[:n_trials]


def mark_surplus(study: optuna.Study, trial_id: int) -> None:
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial_id, SURPLUS_ATTR, True)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def stale(study: optuna.Study, stale_after: float) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose worker is gone: released, or silent for `stale_after` seconds (a trial
    with no heartbeat at all is judged by its start time)."""
    from optuna.trial import TrialState

    now = time.time()
    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if now - _last_sign_of_life(trial)[0] > stale_after
    ]


def take_over(sweep_dir: Path, trial: optuna.trial.FrozenTrial) -> bool:
    """Claims a stale trial for this worker; False when another worker claimed it first. The claim
    is named by the last heartbeat the trial's worker left, which every worker that finds the trial
    stale read alike (a count of earlier claims was not: a worker counting just after another's
    claim took the same trial over a second time)."""
    when, worker = _last_sign_of_life(trial)
    return claim(sweep_dir, f"{trial.number}.{worker}.{when:.3f}".replace("/", "_"))


def _last_sign_of_life(trial: optuna.trial.FrozenTrial) -> tuple[float, str]:
    """(unix time, worker) of the trial's last heartbeat; its start where it has none."""
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat:
        return float(beat[0]), str(beat[1])
    return (trial.datetime_start.timestamp() if trial.datetime_start else 0.0), "started"


class Heartbeat:
    """A thread that beats for this worker's running trials; `release` tells the others at once
    that they are free to take them over (a clean stop)."""

    def __init__(self, study: optuna.Study, interval: float) -> None:
        self.study, self.interval = study, interval
        self.trials: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cifarbench-heartbeat", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        self._beat(trial_id)
        with self.lock:
            self.trials.add(trial_id)

    def done(self, trial_id: int) -> None:
        with self.lock:
            self.trials.discard(trial_id)

    def _beat(self, trial_id: int, when: float | None = None) -> None:
        try:
            self.study._storage.set_trial_user_attr(
                trial_id, HEARTBEAT_ATTR, [time.time() if when is None else when, worker_name()]
            )
        except Exception as exc:  # a trial told finished meanwhile, or the storage briefly unreachable
            log.debug("heartbeat for trial id %d not written: %s", trial_id, exc)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                trials = list(self.trials)
            for trial_id in trials:
                self._beat(trial_id)

    def release(self) -> None:
        """Stops beating and marks the trials still running here as free to take over."""
        self.stopped.set()
        self.thread.join(timeout=self.interval + 5)
        with self.lock:
            trials, self.trials = list(self.trials), set()
        for trial_id in trials:
            self._beat(trial_id, when=0.0)
