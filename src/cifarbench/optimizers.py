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

OWN_KEYS = ("decay_norm_and_bias", "norm_lr_scale")
NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module) -> optim.Optimizer:
    """Only trainable parameters are handed over, so frozen layers cost nothing and stay frozen."""
    cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    decay_norm_and_bias = cfg.pop("decay_norm_and_bias", True)
    norm_lr_scale = cfg.pop("norm_lr_scale", 1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": params}]
    if norm_lr_scale != 1.0:
        # Batch-norm shifts move slowly at a weight-sized lr; airbench scales their lr up and their
        # weight decay down by the same factor, so lr x weight decay (the shrink per step) is kept.
        norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in norm_ids]},
            {
                "params": [p for p in params if id(p) in norm_ids],
                "lr": cfg["lr"] * norm_lr_scale,
                "weight_decay": cfg.get("weight_decay", 0.0) / norm_lr_scale,
            },
        ]
    elif not decay_norm_and_bias and cfg.get("weight_decay"):
        # Norm scales/shifts and biases are 1-D: decaying them only fights the normalisation.
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    return instantiate(cfg)(groups)


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
        if self.steps >= self.total_steps:
            weight = 1.0  # done: the model ends on the slow weights
        elif self.steps % self.every == 0:
            weight = self.decay**self.every * (self.steps / self.total_steps) ** 3
        else:
            return
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
