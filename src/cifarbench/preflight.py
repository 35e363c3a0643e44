"""What torch would refuse late, tried before the first batch: the optimizer and schedule, and the first batch.

The config check (config_check.py) knows cifarbench's own rules; the values it hands on to torch
(betas, a StepLR's step_size, a OneCycleLR's pct_start, a cosine's eta_min ...) torch checks only
when it builds or steps the object, which can be an epoch into the run, or never, while the
learning rate quietly goes negative. So each job first builds both on a model of a few parameters
and steps the schedule through every step of the run (milliseconds to a second): whatever torch
raises becomes one line naming the keys and values it came from, and a learning rate that is ever
negative, NaN or infinite is refused. Then two training images go through the augmentation and the
model (check_first_batch), so that a value which only breaks a batch is refused the same way.
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
from cifarbench.errors import UserError, one_line
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


def _culprits(cfg: DictConfig, group: str, steps_per_epoch: int) -> str:
    """`key=value` of the keys of `group` that cause the problem: each key that differs from the
    YAML option it came from and whose default makes the problem go away; else every key that
    differs, or every key of the group."""
    node = cfg[group]
    option = closest_option(group, node)
    changed = _changed(node, option)
    causes = []
    for key in [k for k in changed if k in option] if option is not None else []:  # (+key: not in the option)
        trial = copy.deepcopy(cfg)
        trial[group][key] = option[key]
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


def _changed(node: DictConfig, option: dict[str, Any] | None) -> list[str]:
    """The keys of `node` whose value is not the option's (an interpolation there, e.g. ${seed}, is any value)."""
    if option is None:
        return _settable(node)
    same = [k for k in _settable(node) if _is_interpolation(option.get(k)) or node.get(k) == option.get(k)]
    return [k for k in _settable(node) if k not in same]


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")


def closest_option(group: str, node: DictConfig) -> dict[str, Any] | None:
    """The conf/<group>/*.yaml option `node` was composed from: same `_target_`, fewest values changed."""
    best: tuple[int, dict[str, Any]] | None = None
    for path in sorted((config_dir() / group).glob("*.yaml")):
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            continue
        option = OmegaConf.to_container(loaded, resolve=False)  # its own values, interpolations as written
        if option.get("_target_") != node.get("_target_"):
            continue
        differences = len(_changed(node, option))
        if best is None or differences < best[0]:
            best = (differences, option)
    return None if best is None else best[1]


def check_first_batch(
    model: nn.Module, augmentation: Any, images: torch.Tensor, normalize: Any, cfg: DictConfig, classes: int
) -> None:
    """Two training images through the augmentation and the model (eval mode, no gradient, the random
    generators forked so the run's draws are untouched): a value that only breaks the first batch
    (a negative padding, a zero width) or logits of the wrong size end as one line naming the keys."""
    device = images.device
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.no_grad():
        sample = images[:2]
        generator = torch.Generator(device=device).manual_seed(0)
        try:
            augmented = augmentation(sample, generator, torch.arange(len(sample), device=device), 1)
        except Exception as exc:
            raise UserError(f"{_keys('augmentation', cfg)} is refused: it fails on a batch ({one_line(exc)})") from None
        was_training = model.training
        model.eval()
        try:
            logits = model(normalize(augmented))
        except Exception as exc:
            raise UserError(f"{_keys('model', cfg)} is refused: it fails on a batch ({one_line(exc)})") from None
        finally:
            model.train(was_training)
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise UserError(
            f"{_keys('model', cfg)} is refused: it gives {tuple(logits.shape[1:])} outputs per image, and the "
            f"data has {classes} classes"
        )


def _keys(group: str, cfg: DictConfig) -> str:
    """The keys of `group` that differ from the YAML option it came from (all of them if none do)."""
    node = cfg[group]
    option = closest_option(group, node)
    changed = _changed(node, option)
    shown = ", ".join(f"{group}.{k}={_show(node.get(k))}" for k in changed or _settable(node))
    return shown or group
