"""The config check that runs before anything else: unknown keys and options, wrong types and
out-of-range values end as one line naming the key, the value and what is allowed (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifarbench.config import GROUPS, config_dir, group_options, register_resolvers
from cifarbench.errors import UserError

NUM_CLASSES = 10


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# key -> (test, what is allowed). Keys absent from a config (e.g. model.dropout) are not checked.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "threads": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "device": (lambda v: v in ("auto", "cpu", "cuda", "mps"), "one of auto, cpu, cuda, mps"),
    "precision": (lambda v: v in ("auto", "fp32", "bf16", "fp16"), "one of auto, fp32, bf16, fp16"),
    "test_weights": (lambda v: v in ("best", "last"), "best or last"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "deterministic": (lambda v: isinstance(v, bool), "true or false"),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
    "monitor": (lambda v: v in ("val_acc", "val_loss"), "val_acc or val_loss"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "ema_decay": (lambda v: v is None or (_is_number(v) and 0 < v < 1), "null or a number in (0, 1)"),
    "lookahead_every": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "lookahead_decay": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "tta": (lambda v: v in ("none", "flip", "flip_translate"), "one of none, flip, flip_translate"),
    "mixup_alpha": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "cutmix_alpha": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "early_stopping.patience": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "early_stopping.min_delta": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "model.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.dropout_deep": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.input_size": (lambda v: _is_int(v) and v >= 32, "an integer >= 32"),
    "model.unfreeze_last": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.norm_lr_scale": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "augmentation.flip": (lambda v: v in (True, False, "alternating"), "true, false or alternating"),
    "augmentation.padding_mode": (lambda v: v in ("zeros", "reflect"), "zeros or reflect"),
    "data.val_size": (
        lambda v: _is_int(v) and v >= 0 and v % NUM_CLASSES == 0,
        f"an integer >= 0 and a multiple of {NUM_CLASSES} (class-balanced)",
    ),
    "data.train_subset": (
        lambda v: v is None or (_is_int(v) and v >= NUM_CLASSES and v % NUM_CLASSES == 0),
        f"null or a positive multiple of {NUM_CLASSES} (class-balanced)",
    ),
    "data.test_subset": (
        lambda v: v is None or (_is_int(v) and v >= NUM_CLASSES and v % NUM_CLASSES == 0),
        f"null or a positive multiple of {NUM_CLASSES} (class-balanced)",
    ),
    "data.normalization": (lambda v: v in ("cifar10", "half", "unit"), "one of cifar10, half, unit"),
}


def check_config(cfg: DictConfig) -> None:
    for key, (test, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default="__absent__")
        if value == "__absent__":
            continue
        if not test(value):
            raise UserError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def _first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A sweep's first job stands for all of them: `a=1,2` -> `a=1`, `model=glob(r00*)` -> one match."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    single = []
    for override in parsed:
        if override.is_sweep_override():
            if isinstance(override._value, Glob):  # hydra resolves globs against the group's options
                group = override.key_or_group
                matches = override._value.filter(group_options(group))
                if not matches:
                    raise UserError(f"{override.input_line}: the glob matches no option of {group}")
                value = matches[0]
            else:
                value = next(iter(override.sweep_string_iterator()))
            single.append(f"{override.get_key_element()}={value}")
        else:
            single.append(override.input_line)
    return single


def _check_group_choices(overrides: list[str]) -> None:
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group in GROUPS and not override.is_sweep_override() and override.value() is not None:
            value = str(override.value())
            options = group_options(group)
            if value not in options and value != "null":
                raise UserError(f"{group}={value} is not known; choose one of: {', '.join(options)}")


# hydra/launcher option -> (the plugin's module, the extra that installs it)
LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
}


def check_launcher(overrides: list[str]) -> None:
    import importlib

    for override in overrides:
        name = override.split("=", 1)[1] if override.startswith("hydra/launcher=") else None
        if name in LAUNCHERS:
            try:
                importlib.import_module(LAUNCHERS[name][0])
            except ImportError:
                extra = LAUNCHERS[name][1]
                raise UserError(f"hydra/launcher={name} needs the optional '{extra}' extra, which is not installed: "
                                f"pip install 'cifarbench[{extra}]'") from None  # fmt: skip


def check_overrides(overrides: list[str]) -> DictConfig:
    """Composes the config the overrides ask for (a sweep's first job) and checks it, before Hydra
    creates any run directory. Returns the composed config."""
    check_launcher(overrides)
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    if any(arg.startswith("-") for arg in overrides):
        return OmegaConf.create()  # Hydra's own modes (--help, --cfg, --info ...) check their own arguments
    plain = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "resume="))]
    try:
        single = _first_of_each_sweep(plain)
        _check_group_choices(single)
        register_resolvers()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=single)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_one_line(exc)) from None
    check_config(cfg)
    return cfg


def _one_line(exc: Exception) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.replace("To append to your config use +", "Unknown key; to add a new key use +")
