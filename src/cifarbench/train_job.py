"""The Hydra task behind `cifarbench train`: one job = one run directory."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cifarbench import distributed, owner, record
from cifarbench.config import register_resolvers
from cifarbench.errors import OutOfSpace, TrainingStopped, UserError
from cifarbench.files import DiskFull, write_text_atomic
from cifarbench.loggers import flatten
from cifarbench.owner import RunDirInUse
from cifarbench.runs import TRIAL_ENV, beside_the_training
from cifarbench.search.trial import trial_pruning
from cifarbench.state import load_checkpoint
from cifarbench.train import fit

log = logging.getLogger("cifarbench")
SCRATCH_PREFIX = "cifarbench-rank"  # torchrun workers' scratch run dirs (cli.distributed_overrides)


def train_job(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    main_process = distributed.world_from_env().is_main
    try:
        if main_process:
            owner.claim(run_dir)  # this process owns the run directory until it ends (cli.claim_named_run_dir)
        resume = None
        if in_sweep and not cfg.resume:
            finished = finished_before(run_dir, cfg)
            if finished is not None:  # the same sweep run again into its own directory: keep what is done
                log.info("job %s finished in an earlier run of this sweep, with this config: skipped", run_dir.name)
                return tested_accuracy(finished)
            if requeued(run_dir):
                cfg.resume = str(run_dir)  # interrupted, preempted or requeued: continue where it was
        if cfg.resume:
            resume = load_checkpoint(Path(cfg.resume) / "checkpoints" / "last.pt")
            cfg = continue_with(resume["config"], cfg)
        else:
            # checked once, by cli.train before Hydra started: every job of a sweep, before the first ran
            OmegaConf.resolve(cfg)  # the saved config says what ran, not how it was computed
            write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        set_threads(cfg)
        trial = trial_pruning(run_dir, cfg.monitor) if in_sweep else None  # a trial of hydra/sweeper=optuna
        if trial is None:
            return tested_accuracy(fit(cfg, run_dir, resume))
        # a trial reports each epoch to its study and leaves its test to the search, which reads
        # the test set of its best trial only
        return tested_accuracy(fit(cfg, run_dir, resume, after_epoch=trial.after_epoch, read_test_set=False))
    except (SweepDirTaken, RunDirInUse) as exc:  # the sweep points at the wrong directory, or at one in use
        print(f"cifarbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except UserError as exc:
        if in_sweep:  # one bad job must not lose the others: record it, let the sweep go on
            log.error("cifarbench: error: %s", exc)
            # a failed resume keeps the run's own record ("interrupted, resume with ..."), a finished job its results
            if not cfg.resume and not record.is_completed(run_dir):
                record.write_failed(run_dir, str(exc))
            return None
        discard_if_untrained(run_dir, cfg)
        if main_process:
            print(f"cifarbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stopped:  # fit has written the run's record with the status
        message = f"cifarbench: training {stopped.status} in {run_dir}: {stopped}"
        if stopped.status == record.PRUNED:  # a search's normal outcome, not a problem
            log.info(message)
            return None
        interrupted = stopped.status == record.INTERRUPTED
        checkpoint = (run_dir / "checkpoints" / "last.pt").is_file()
        free_first = "free some space, then " if isinstance(stopped, OutOfSpace) else ""
        if interrupted and os.environ.get(TRIAL_ENV):
            message += f"; {free_first}continue the search with its own command and hydra.sweep.dir={run_dir.parent}"
        elif interrupted and checkpoint:
            message += f"; last epoch's checkpoint kept, {free_first}resume with: cifarbench train resume={run_dir}"
        elif interrupted:
            message += f"; no epoch was saved, so {free_first}run the command again"
        elif checkpoint:
            message += f"; the last good checkpoint is kept: {run_dir / 'checkpoints' / 'last.pt'}"
        else:
            message += "; no epoch completed, so there is no checkpoint"
        if main_process:
            print(message, file=sys.stderr)
        if in_sweep and not interrupted:
            return None  # a diverged job is a result of the sweep; an interrupt stops the sweep
        sys.exit(stopped.exit_code)
    except DiskFull as full:  # before training (config.yaml, the data cache): nothing to record, no room to
        discard_if_untrained(run_dir, cfg)
        if main_process:
            print(f"cifarbench: error: {full}; free some space and run the command again", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if not cfg.resume:  # as above: the interrupted run's record and checkpoint stay as they were
            record.write_failed(run_dir, f"{type(exc).__name__}: {exc}")
        if in_sweep:
            log.exception("job failed")
            return None
        raise
    finally:
        distributed.shutdown()
        if not main_process and run_dir.name.startswith(SCRATCH_PREFIX):
            shutil.rmtree(run_dir, ignore_errors=True)  # a torchrun worker's scratch directory


def discard_if_untrained(run_dir: Path, cfg: DictConfig) -> None:
    """A new run that stopped before its first epoch leaves no run-looking folder behind, nor the
    empty folders above it, up to output_root, that only it was in."""
    if not cfg.resume and not (run_dir / "history.csv").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        root = Path(cfg.output_root).resolve()
        parent = run_dir.resolve().parent
        while parent == root or root in parent.parents:
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent


def tested_accuracy(metrics: dict) -> float | None:
    """What the job returns to Hydra (test null: a search trial, tested at the search's end if best)."""
    return (metrics.get("test") or {}).get("accuracy")


class SweepDirTaken(UserError):
    """hydra.sweep.dir holds the finished jobs of another sweep."""


def finished_before(run_dir: Path, cfg: DictConfig) -> dict | None:
    """metrics.json of a sweep job that an earlier run of the sweep completed with this very config
    (`cifarbench train -m ... hydra.sweep.dir=DIR` again). A job there of another config, finished
    or interrupted, is refused: the sweep points at the wrong folder."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return None
    if _what_it_trains(OmegaConf.load(saved_file)) != _what_it_trains(cfg):
        raise SweepDirTaken(f"{run_dir} holds a job of another config; run the sweep into a new hydra.sweep.dir")
    finished = record.read(run_dir)
    return finished if finished["status"] == record.COMPLETED else None


def _what_it_trains(cfg: DictConfig) -> dict:
    """The config less what is beside the training (its seed stays: a sweep's jobs may differ in
    nothing else)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if not beside_the_training(k)}


def requeued(run_dir: Path) -> bool:
    """This job ran before in this very directory (a requeued array job) and did not finish."""
    return (run_dir / "checkpoints" / "last.pt").is_file() and not record.is_completed(run_dir)


def threads_per_job(parallel_jobs: int) -> int:
    """Torch threads for each of `parallel_jobs` processes sharing this machine's cores (negative:
    as many as there are cores, joblib's n_jobs=-1), so that together they never oversubscribe."""
    cores = os.cpu_count() or 1
    return 1 if parallel_jobs < 0 else max(1, cores // max(1, parallel_jobs))


def set_threads(cfg: DictConfig) -> None:
    """`threads`, or for parallel local sweeps (joblib) cores / n_jobs."""
    threads = cfg.threads
    launcher = HydraConfig.get().launcher
    if threads is None and "Joblib" in str(launcher.get("_target_", "")):
        threads = threads_per_job(launcher.get("n_jobs") or 1)
    if threads:
        torch.set_num_threads(threads)
    log.info("torch threads: %d", torch.get_num_threads())


def continue_with(saved: dict, cfg: DictConfig) -> DictConfig:
    """The interrupted run's own config, with only what may change on resume (progress, device)."""
    resumed = OmegaConf.create(saved)
    resumed.progress, resumed.device = cfg.progress, cfg.device
    resumed.resume = cfg.resume
    return resumed


register_resolvers()  # launcher workers (joblib, submitit) import this module to run the task
