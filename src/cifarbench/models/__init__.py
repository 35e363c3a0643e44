"""Models: conf/model/<name>.yaml names a class here by `_target_`; its other keys are the knobs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifarbench.config import instantiate
from cifarbench.errors import UserError, check_choice
from cifarbench.models.keras_init import keras_init
from cifarbench.options import INITS


def build_model(model_cfg: DictConfig, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """The model `model_cfg` names, for `num_classes` classes of image_size x image_size images (the
    data's: a model class with IMAGE_SIZE is built for that size alone). `init: keras` (the Keras-built
    report models) re-initialises it with Keras's defaults, which are not knobs of the model class."""
    init = model_cfg.get("init", INITS[0])
    check_choice("model.init", init, INITS)
    # num_classes: written in model configs before it came from the data (runs saved then have it)
    if model_cfg.get("num_classes", num_classes) != num_classes:
        raise UserError(
            f"model.num_classes={model_cfg.num_classes} does not match the data's {num_classes} classes: a model's "
            "output size comes from its data; drop model.num_classes"
        )
    knobs = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k not in ("init", "num_classes")])
    built_for = getattr(get_object(knobs._target_), "IMAGE_SIZE", None)
    if built_for is not None and image_size != built_for:
        name = knobs._target_.rsplit(".", 1)[-1]
        raise UserError(
            f"{name} is built for {built_for}x{built_for} images, not data.image_size={image_size}: set data."
            f"image_size={built_for}, or use a model that takes any size (improved, mfm24, fast, or a torchvision one)"
        )
    model = instantiate(knobs, num_classes=num_classes, _convert_="all")
    return keras_init(model) if init == "keras" else model


def model_settings(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`model_cfg` with every knob it leaves out at the value build_model builds it with: `init`
    torch and the model class's own defaults. A run saved before an option existed was built that
    way, so this is what it trained (the defaults in conf/model may since have changed)."""
    settings = {"init": INITS[0], **model_cfg}
    try:
        parameters = inspect.signature(get_object(str(settings["_target_"]))).parameters.values()
    except (KeyError, ImportError, ValueError, TypeError):
        parameters = []  # no class named, or one that is gone: what was saved is all there is
    for parameter in parameters:
        if parameter.default is not inspect.Parameter.empty:
            default = parameter.default
            settings.setdefault(parameter.name, list(default) if isinstance(default, tuple) else default)
    settings.pop("num_classes", None)  # the data's (older runs saved it), not a setting of the model
    return settings


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
