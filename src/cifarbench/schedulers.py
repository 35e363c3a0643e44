"""Learning-rate schedules (conf/scheduler/*): torch.optim.lr_scheduler classes via Hydra.

Besides the `_partial_` constructor, a scheduler YAML says when it steps: `interval: epoch` or
`interval: step` (every batch). `_target_: null` means a constant learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from torch import optim
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR

from cifarbench.config import instantiate
from cifarbench.errors import check_choice
from cifarbench.options import INTERVALS


@dataclass
class Schedule:
    scheduler: LRScheduler | ReduceLROnPlateau | None
    interval: str

    def after_batch(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def training_steps(epochs: float, steps_per_epoch: int) -> int:
    """The run's optimizer steps: `epochs` may be fractional (airbench94 trains 9.9), and the last
    epoch then stops part way, rounded up to a whole batch. Rounded to 6 places first, so that
    float products such as 2.2 x 10 = 22.000000000000004 stay 22."""
    return max(1, math.ceil(round(epochs * steps_per_epoch, 6)))


def epoch_lengths(epochs: float, steps_per_epoch: int) -> list[int]:
    """Steps of each epoch of the run: whole epochs, then a fractional run's part epoch (7.5 x 8:
    [8] * 7 + [4]). Cut from training_steps, so the epochs and the steps cannot disagree."""
    whole, part = divmod(training_steps(epochs, steps_per_epoch), steps_per_epoch)
    return [steps_per_epoch] * whole + ([part] if part else [])


def build_schedule(
    scheduler_cfg: DictConfig, optimizer: optim.Optimizer, epochs: float, steps_per_epoch: int
) -> Schedule:
    cfg = OmegaConf.to_container(scheduler_cfg, resolve=True)
    interval = cfg.pop("interval", "epoch")
    check_choice("scheduler.interval", interval, INTERVALS)
    if cfg.get("_target_") is None:
        return Schedule(None, interval)
    # Schedules that need the run's length get it from the run, so `epochs=N` is all a user changes;
    # a fractional run's part epoch counts as an epoch for the per-epoch ones.
    lengths = epoch_lengths(epochs, steps_per_epoch)
    total = sum(lengths) if interval == "step" else len(lengths)
    for key in ("total_steps", "T_max", "total_iters"):
        if cfg.get(key, "") is None:
            cfg[key] = total
    return Schedule(instantiate(cfg)(optimizer), interval)


def warmup_cosine(
    optimizer: optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.1,
    start_factor: float = 0.01,
    eta_min: float = 0.0,
) -> SequentialLR:
    """Linear warm-up over the first `warmup_fraction` of the steps, then cosine decay: torch's own
    LinearLR and CosineAnnealingLR chained by SequentialLR."""
    warmup = max(1, round(warmup_fraction * total_steps))
    decay = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=eta_min)
    return _after_warmup(optimizer, decay, warmup, start_factor)


def warmup_linear(
    optimizer: optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.2,
    start_factor: float = 0.2,
    end_factor: float = 0.07,
) -> SequentialLR:
    """A triangle (airbench94): linear from start_factor x lr up to lr over the first
    `warmup_fraction` of the steps, then linear down to end_factor x lr. Every parameter group keeps
    its own lr ratio (unlike OneCycleLR, which sets one max_lr for all)."""
    warmup = max(1, round(warmup_fraction * total_steps))
    decay = LinearLR(optimizer, start_factor=1.0, end_factor=end_factor, total_iters=max(1, total_steps - warmup))
    return _after_warmup(optimizer, decay, warmup, start_factor)


def _after_warmup(optimizer: optim.Optimizer, decay: LRScheduler, warmup: int, start_factor: float) -> SequentialLR:
    ramp = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, schedulers=[ramp, decay], milestones=[warmup])
