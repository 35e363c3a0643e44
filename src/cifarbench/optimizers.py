"""Optimizers (conf/optimizer/*): a torch.optim class instantiated by Hydra from `_target_`.

The YAML is a `_partial_` torch.optim constructor; the only key that is ours is
`decay_norm_and_bias`, which splits the parameters into two groups before the optimizer is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn, optim

from cifarbench.config import instantiate

OWN_KEYS = ("decay_norm_and_bias",)


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module) -> optim.Optimizer:
    """Only trainable parameters are handed over, so frozen layers cost nothing and stay frozen."""
    cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    decay_norm_and_bias = cfg.pop("decay_norm_and_bias", True)
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": params}]
    if not decay_norm_and_bias and cfg.get("weight_decay"):
        # Norm scales/shifts and biases are 1-D: decaying them only fights the normalisation.
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    return instantiate(cfg)(groups)
