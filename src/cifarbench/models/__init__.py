"""Models: conf/model/<name>.yaml names a class here by `_target_`; its other keys are the knobs."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from cifarbench.config import instantiate


def build_model(model_cfg: DictConfig) -> nn.Module:
    return instantiate(model_cfg, _convert_="all")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
