"""The run's optimizer and learning-rate schedule tried on a stand-in model before the first batch.

The config check (config_check.py) knows cifarbench's own rules; the values it hands on to torch
(betas, a StepLR's step_size, a OneCycleLR's pct_start, a cosine's eta_min ...) torch checks only
when it builds or steps the object, which can be an epoch into the run, or never, while the
learning rate quietly goes negative. So each job first builds both on a model of a few parameters
and steps the schedule through every step of the run (milliseconds to a second): whatever torch
raises becomes one line naming the keys and values it came from, and a learning rate that is ever
negative, NaN or infinite is refused.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifarbench.config import config_dir
from cifarbench.errors import UserError
from cifarbench.optimizers import build_optimizer
from cifarbench.schedulers import build_schedule, epoch_lengths

OPTIMIZER_STEPS = 3  # the optimizer's own step is tried a few times; the schedule over every step


def stand_in_model() -> nn.Module:
    """Every kind of parameter a real model hands the optimizer: a conv filter and a hidden matrix
    (Muon's), batch-norm scale and shift and a bias (the no-decay group), an output layer."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 2)
    )


def check_optimization(cfg: DictConfig, steps_per_epoch: int) -> None:
    """Refuses (UserError, one line) an optimizer or schedule that torch rejects or whose learning
    rate leaves [0, inf) at any step of the run; names the keys whose values cause it."""
    problem = _try(cfg, steps_per_epoch)
    if problem is None:
        return
    group, message = problem
    culprits = _culprits(cfg, group, steps_per_epoch)
    raise UserError(f"{culprits} is refused: {message}")


def _try(cfg: DictConfig, steps_per_epoch: int) -> tuple[str, str] | None:
    """(group, what went wrong) for the first problem met, or None."""
    model = stand_in_model()
    with _torch_errors("optimizer", cfg) as failed:
        optimizer = build_optimizer(cfg.optimizer, model)
        for _ in range(OPTIMIZER_STEPS):
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.01)
            optimizer.step()
    if failed:
        return failed[0]
    with _torch_errors("scheduler", cfg) as failed:
        schedule = build_schedule(cfg.scheduler, optimizer, cfg.epochs, steps_per_epoch)
    if failed or schedule.scheduler is None:
        return failed[0] if failed else None
    lengths = epoch_lengths(cfg.epochs, steps_per_epoch)
    total, step, per_step = sum(lengths), 0, schedule.interval == "step"
    with _torch_errors("scheduler", cfg) as failed, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "scheduler.step() before optimizer.step()": the stand-in stepped 3 times
        for steps in lengths:
            for _ in range(steps if per_step else 0):
                step += 1
                schedule.after_batch()
                if (bad := _lr_problem(optimizer, f"at step {step} of {total}")) is not None:
                    return bad
            step += 0 if per_step else steps
            schedule.after_epoch(1.0)  # a metric-driven schedule (plateau) hears a steady loss
            if (bad := _lr_problem(optimizer, f"after step {step} of {total}")) is not None:
                return bad
    return failed[0] if failed else None


def _lr_problem(optimizer: torch.optim.Optimizer, when: str) -> tuple[str, str] | None:
    for group in _all_groups(optimizer):
        lr = float(group["lr"])
        if not math.isfinite(lr) or lr < 0:
            return "scheduler", f"the learning rate becomes {lr:g} {when}; it must stay a finite number >= 0"
    return None


def _all_groups(optimizer: torch.optim.Optimizer) -> Iterator[dict]:
    yield from optimizer.param_groups
    other = getattr(optimizer, "other", None)  # MuonHybrid's optimizer for what is not a matrix
    if other is not None:
        yield from other.param_groups


@contextmanager
def _torch_errors(group: str, cfg: DictConfig) -> Iterator[list[tuple[str, str]]]:
    """Collects what torch raises while building or stepping `group`'s object, as (group, message)."""
    failed: list[tuple[str, str]] = []
    try:
        yield failed
    except UserError:
        raise
    except Exception as exc:
        target = str(cfg[group].get("_target_")).rsplit(".", 1)[-1]
        failed.append((group, f"{target} raises {one_line(exc)}"))


def one_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc  # Hydra wraps what the target raised in an InstantiationException
    text = " ".join(str(cause).split())[:200]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _culprits(cfg: DictConfig, group: str, steps_per_epoch: int) -> str:
    """`key=value` of the keys of `group` that cause the problem: each key that differs from the
    YAML option it came from and whose default makes the problem go away; else every key that
    differs, or every key of the group."""
    node = cfg[group]
    option = closest_option(group, node)
    changed = [k for k in _settable(node) if option is None or node.get(k) != option.get(k)]
    causes = []
    for key in changed if option is not None else []:
        trial = copy.deepcopy(cfg)
        trial[group][key] = option.get(key)
        if _try(trial, steps_per_epoch) is None:
            causes.append(key)
    if causes:
        return ", ".join(f"{group}.{k}={_show(node.get(k))}" for k in causes)
    # no one key of its own: the group's settings together with the rest of the run (epochs, optimizer)
    shown = ", ".join(f"{group}.{k}={_show(node.get(k))}" for k in changed or _settable(node))
    return f"{group} with {shown} in this run" if shown else f"{group} in this run"


def _settable(node: DictConfig) -> list[str]:
    return [k for k in node if not str(k).startswith("_") and not isinstance(node.get(k), DictConfig)]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(OmegaConf.to_container(value)) if OmegaConf.is_list(value) else str(value)


def closest_option(group: str, node: DictConfig) -> DictConfig | None:
    """The conf/<group>/*.yaml option `node` was composed from: same `_target_`, fewest values changed."""
    best: tuple[int, DictConfig] | None = None
    for path in sorted((config_dir() / group).glob("*.yaml")):
        option = OmegaConf.load(path)
        if not isinstance(option, DictConfig) or option.get("_target_") != node.get("_target_"):
            continue
        differences = sum(node.get(k) != option.get(k) for k in _settable(node))
        if best is None or differences < best[0]:
            best = (differences, option)
    return None if best is None else best[1]
