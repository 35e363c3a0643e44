"""Models: conf/model/<name>.yaml names a class here by `_target_`; its other keys are the knobs."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifarbench.config import instantiate
from cifarbench.errors import check_choice
from cifarbench.models.keras_init import keras_init
from cifarbench.options import INITS


def build_model(model_cfg: DictConfig) -> nn.Module:
    """The model `model_cfg` names; `init: keras` (the Keras-built report models) re-initialises it
    with Keras's defaults, which are not knobs of the model class."""
    init = model_cfg.get("init", "torch")
    check_choice("model.init", init, INITS)
    knobs = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k != "init"])
    model = instantiate(knobs, _convert_="all")
    return keras_init(model) if init == "keras" else model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
