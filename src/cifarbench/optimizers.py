"""Optimizers (conf/optimizer/*): a torch.optim class instantiated by Hydra from `_target_`.

The YAML is a `_partial_` torch.optim constructor; the keys that are ours split the parameters into
groups before the optimizer is built: `decay_norm_and_bias` (false: no weight decay on 1-D
parameters) and `norm_lr_scale` (normalisation layers' parameters get lr x scale and weight decay
/ scale, airbench's "bias scaler"; 1 = off).

`Lookahead` is the weight averaging of the loop's `lookahead_every` option.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn, optim
from torch.nn.modules.batchnorm import _NormBase

from cifarbench.config import instantiate

NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module) -> optim.Optimizer:
    """Only trainable parameters are handed over, so frozen layers cost nothing and stay frozen.
    Parameters that need their own lr or weight decay (the two own keys) get their own groups."""
    cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    decay_norm_and_bias = cfg.pop("decay_norm_and_bias", True)
    norm_lr_scale = cfg.pop("norm_lr_scale", 1.0)
    lr, weight_decay = cfg["lr"], cfg.get("weight_decay", 0.0)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # Batch-norm shifts move slowly at a weight-sized lr; airbench scales their lr up and their
        # weight decay down by the same factor, so lr x weight decay (the shrink per step) is kept.
        scale = norm_lr_scale if id(p) in norm_ids else 1.0
        # Norm scales/shifts and biases are 1-D: decaying them only fights the normalisation.
        decay = 0.0 if p.ndim <= 1 and not decay_norm_and_bias else weight_decay / scale
        groups.setdefault((lr * scale, decay), []).append(p)
    param_groups = [
        {"params": params, "lr": g_lr, "weight_decay": g_decay} for (g_lr, g_decay), params in groups.items()
    ]
    return instantiate(cfg)(param_groups)


class Lookahead:
    """Lookahead weight averaging as airbench94 uses it: every `every` steps a slow copy of the
    weights (and batch-norm statistics) moves toward the fast ones, slow = d*slow + (1-d)*fast, and
    the fast weights restart from it. d = decay**every * (step/total)**3 grows from 0, so early
    training runs free and late training is smoothed; the last step leaves the slow weights in the
    model.

    `model` is the bare module (not its DDP or torch.compile wrapper, whose state-dict keys differ).
    """

    def __init__(self, model: nn.Module, every: int, decay: float, total_steps: int) -> None:
        self.model = model
        self.every, self.decay, self.total_steps = every, decay, total_steps
        self.steps = 0
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def after_batch(self) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._pull(self.decay**self.every * min(1.0, self.steps / self.total_steps) ** 3)
        if self.steps == self.total_steps:
            self.finish()

    @torch.no_grad()
    def finish(self) -> None:
        """Leave the slow weights in the model (also when a run stops early)."""
        self._pull(1.0)

    def _pull(self, weight: float) -> None:
        for name, fast in self.model.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(fast, 1.0 - weight)
                fast.copy_(self.slow[name])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
