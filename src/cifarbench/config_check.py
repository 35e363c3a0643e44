"""The config check that runs before anything else: unknown keys and options, wrong types and
out-of-range values end as one line naming the key, the value and what is allowed (exit 2)."""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.errors import HydraException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifarbench.config import GROUPS, config_dir, group_options, register_resolvers
from cifarbench.errors import UserError, import_extra, show
from cifarbench.options import (
    DATASETS,
    DEVICES,
    DROPOUT_SCOPES,
    FLIPS,
    INITS,
    LABELS,
    MONITORS,
    NORMALIZATIONS,
    PADDING_MODES,
    PRECISIONS,
    TEST_WEIGHTS,
    TTA_LEVELS,
)
from cifarbench.search.space import checked_space, interval_ends, is_search, require_optuna, sweeper_params

KNOWN_CLASS_COUNTS = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}
MAX_EPOCHS = 10_000  # a typo's bound (epochs=1e9 would plan a billion epochs before failing)
MAX_THREADS = 1024
TEXT_KEYS = ("name", "output_root", "resume", "data.root", "data.source")  # name=nan names a folder "nan"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def one_of(allowed: tuple) -> tuple[Callable[[Any], bool], str]:
    """The rule for a value from a list (options.py); True is not 1 here, as YAML tells them apart."""
    shown = ", ".join(show(a) for a in allowed)
    return (lambda v: any(v == a and type(v) is type(a) for a in allowed), f"one of {shown}")


# key -> (test, what is allowed); lists of values come from options.py. Keys absent from a config
# (e.g. model.dropout) are not checked.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (
        lambda v: _is_number(v) and 0 < v <= MAX_EPOCHS,
        f"a number > 0 (7.5: seven epochs and half of an eighth), at most {MAX_EPOCHS}",
    ),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "threads": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_THREADS),
        f"null or an integer in [1, {MAX_THREADS}]",
    ),
    "device": one_of(DEVICES),
    "precision": one_of(PRECISIONS),
    "precision_cache": (lambda v: isinstance(v, bool), "true or false"),
    "test_weights": one_of(TEST_WEIGHTS),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "deterministic": (lambda v: isinstance(v, bool), "true or false"),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
    "overwrite": (lambda v: isinstance(v, bool), "true or false"),
    "monitor": one_of(MONITORS),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "ema_decay": (lambda v: v is None or (_is_number(v) and 0 < v < 1), "null or a number in (0, 1)"),
    "lookahead_every": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "lookahead_decay": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "tta": one_of(TTA_LEVELS),
    "mixup_alpha": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "cutmix_alpha": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "validate_every": (lambda v: v is None or (_is_int(v) and v >= 0), "null or an integer >= 0"),
    "early_stopping.patience": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "early_stopping.min_delta": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "model.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.dropout_deep": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.init": one_of(INITS),
    "model.dropout_scope": one_of(DROPOUT_SCOPES),
    "model.convs_per_block": (lambda v: _is_int(v) and 1 <= v <= 4, "an integer in [1, 4]"),
    "model.input_size": (lambda v: _is_int(v) and v >= 32, "an integer >= 32"),
    "model.unfreeze_last": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.norm_lr_scale": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "augmentation.flip": one_of(FLIPS),
    "augmentation.padding_mode": one_of(PADDING_MODES),
    # class-balanced sizes are multiples of the class count, which is known once the data is (data.splits)
    "data.val_size": (
        lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 < v < 1),
        "an integer >= 0 (a class-balanced count) or a number in (0, 1) (a fraction of the training images)",
    ),
    "data.train_subset": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1 (class-balanced)"),
    "data.test_subset": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1 (class-balanced)"),
    "data.name": one_of(DATASETS),
    "data.labels": one_of(LABELS),
    "data.image_size": (lambda v: _is_int(v) and 8 <= v <= 1024, "an integer in [8, 1024]"),
    "data.test_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "data.normalization": one_of(NORMALIZATIONS),
}


def check_config(cfg: DictConfig) -> None:
    for key, (test, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default="__absent__")
        if value == "__absent__":
            continue
        if not test(value):
            raise UserError(f"{key}={value!r} is not allowed: {key} must be {allowed}")
    check_finite(cfg)  # after the rules, which say more about their own keys
    check_dataset(cfg)
    check_test_set_is_read_once(cfg)
    check_sparse_validation(cfg)


def check_finite(node: Any, prefix: str = "") -> None:
    """NaN and infinity are no hyperparameter's value: refused wherever they stand, before a run
    could spread them through every weight."""
    if isinstance(node, DictConfig | ListConfig):
        for key in node if isinstance(node, DictConfig) else range(len(node)):
            child = node._get_node(key)
            if child is not None and not child._is_missing() and not child._is_interpolation():
                check_finite(node[key], f"{prefix}{key}." if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}].")
        return
    key = prefix[:-1]
    if isinstance(node, float) and not math.isfinite(node) and key not in TEXT_KEYS:
        raise UserError(f"{key}={node} is not allowed: {key} must be a finite number (not nan or inf)")


def check_sparse_validation(cfg: DictConfig) -> None:
    """Early stopping and the plateau schedule count epochs of validation: they need every one.
    validate_every=0 validates no epoch, so there is no best epoch to test."""
    every = OmegaConf.select(cfg, "validate_every", default=1)
    if every == 1:
        return
    shown = "null" if every is None else every
    if every == 0 and cfg.test_weights == "best":
        raise UserError(
            "validate_every=0 is refused with test_weights=best: no epoch is validated, so there is no best "
            "epoch; use test_weights=last, or validate_every=1"
        )
    if cfg.early_stopping.enabled:
        raise UserError(
            f"validate_every={shown} is refused with early_stopping.enabled=true, whose patience counts "
            "validated epochs; use validate_every=1"
        )
    if _plateau(cfg):
        raise UserError(
            f"validate_every={shown} is refused with scheduler=plateau, which steps on each epoch's "
            "validation loss; use validate_every=1"
        )


def check_dataset(cfg: DictConfig) -> None:
    """A report's preset is for the report's data set; data=folder needs its source."""
    name = OmegaConf.select(cfg, "data.name", default="cifar10")
    datasets = OmegaConf.select(cfg, "datasets")
    if datasets and name not in datasets:
        preset = OmegaConf.select(cfg, "name", default="this preset")
        raise UserError(
            f"data={name} is refused with {preset}: it reproduces a report on {', '.join(datasets)}, whose figures "
            "say nothing of another data set; for other data use experiment=fast, modern_recipe or best_improved, "
            "or no preset"
        )
    if name == "folder" and not OmegaConf.select(cfg, "data.source"):
        raise UserError(
            "data=folder needs data.source=PATH: an image-folder tree or archive (train/<class>/*, or <class>/*)"
        )
    labels = OmegaConf.select(cfg, "data.labels", default="fine")
    if labels == "coarse" and name != "cifar100":
        raise UserError(
            f"data.labels=coarse is refused with data={name}: only cifar100 has coarse labels (its 20 superclasses)"
        )
    classes = KNOWN_CLASS_COUNTS.get((name, labels))  # a folder's is known once it is read (data.splits)
    for key in ("val_size", "train_subset", "test_subset"):
        value = OmegaConf.select(cfg, f"data.{key}")
        if classes and _is_int(value) and value % classes:
            what = "an integer >= 0" if key == "val_size" else "null or an integer"
            raise UserError(
                f"data.{key}={value} is not allowed: data.{key} must be {what} and a multiple of {classes} "
                f"(class-balanced over {name}'s {classes} classes)"
                + (" or a fraction in (0, 1)" if key == "val_size" else "")
            )


def check_test_set_is_read_once(cfg: DictConfig) -> None:
    """With data.val_size=0 the validation set is the test set (as the reports did): then nothing
    may be decided on validation numbers, or the reported test figure is chosen on itself."""
    if OmegaConf.select(cfg, "data.val_size") != 0:
        return
    why = "with data.val_size=0 the validation set is the test set, so"
    instead = "or set data.val_size=N (e.g. 5000) to validate on N held-out training images"
    if cfg.test_weights == "best":
        raise UserError(
            f"test_weights=best is refused: {why} the tested epoch would be picked by test accuracy; "
            f"use test_weights=last (the final weights), {instead}"
        )
    if cfg.early_stopping.enabled:
        raise UserError(
            f"early_stopping.enabled=true is refused: {why} training would stop on test numbers; "
            f"use early_stopping.enabled=false, {instead}"
        )
    if _plateau(cfg):
        raise UserError(
            f"scheduler=plateau is refused: {why} the learning rate would follow the test loss; "
            f"choose another scheduler, {instead}"
        )


def _plateau(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "scheduler._target_")).endswith("ReduceLROnPlateau")


MAX_JOBS_CHECKED_TOGETHER = 256  # larger grids: each value is checked with the others' first values


def _each_value(override: Override) -> list[str]:
    """The single-valued overrides a sweep override stands for: `a=1,2` -> ["a=1", "a=2"], a glob ->
    one per group option it matches. An Optuna-style `interval(lo, hi)` (maybe inside `tag(...)`) is
    searched, not enumerated: its two ends stand for it. Any other override stands for itself."""
    if not override.is_sweep_override():
        return [override.input_line]
    key = override.input_line.split("=", 1)[0]
    values = _sweep_values(override)
    if not values:
        raise UserError(f"{override.input_line}: this sweep has no values, so it would run no job")
    return [f"{key}={value}" for value in values]


def _sweep_values(override: Override) -> list[str]:
    value = override._value
    if isinstance(value, Glob):  # hydra resolves globs against the group's options
        group = override.key_or_group
        matches = value.filter(group_options(group))
        if not matches:
            raise UserError(f"{override.input_line}: the glob matches no option of {group}")
        return matches
    if isinstance(value, IntervalSweep):  # Optuna may sample either end (whole numbers with tag(int, ...))
        return [str(end) for end in interval_ends(value, override.input_line)]
    return list(override.sweep_string_iterator())


def every_job(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a sweep will run (one list without a sweep), so that every
    value is checked before the first job starts."""
    values = [_each_value(override) for override in OverridesParser.create().parse_overrides(overrides)]
    if math.prod(len(v) for v in values) <= MAX_JOBS_CHECKED_TOGETHER:
        return [list(combination) for combination in itertools.product(*values)]
    first = [v[0] for v in values]
    return [[*first[:i], value, *first[i + 1 :]] for i, vs in enumerate(values) for value in vs]


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
    for override in overrides:
        name = override.split("=", 1)[1] if override.startswith("hydra/launcher=") else None
        if name in LAUNCHERS:
            import_extra(*LAUNCHERS[name], f"hydra/launcher={name}")


def check_overrides(overrides: list[str]) -> DictConfig:
    """Composes the config of every job the overrides ask for and checks it, before Hydra creates
    any run directory. Returns the first job's config."""
    check_launcher(overrides)
    multirun = any(o in ("-m", "--multirun") for o in overrides)
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    if any(arg.startswith("-") for arg in overrides):
        return OmegaConf.create()  # Hydra's own modes (--help, --cfg, --info ...) check their own arguments
    plain = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "resume="))]
    register_resolvers()
    composed = []
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        plain = _search_space_too(overrides, plain, multirun)
        for job in every_job(plain):
            try:
                _check_group_choices(job)
                cfg = compose("config", overrides=job)
                check_config(cfg)
                _check_added_keys(job)
            except (HydraException, OmegaConfBaseException, UserError) as exc:
                message = _one_line(exc) if not isinstance(exc, UserError) else str(exc)
                swept = [o for o, given in zip(job, plain, strict=True) if o != given]
                raise UserError(f"sweep job {' '.join(swept)}: {message}" if swept else message) from None
            composed.append(cfg)
    return composed[0]


def _search_space_too(overrides: list[str], plain: list[str], multirun: bool) -> list[str]:
    """For a search (hydra/sweeper=optuna, or a search= preset): it runs with -m, needs Optuna, and
    optimises a validation figure, so it needs a validation set; the searched values of its
    `hydra.sweeper.params` are checked like the command line's. Other runs: `plain` unchanged."""

    hydra_ones = [o for o in overrides if o.startswith(("hydra/sweeper", "hydra.sweeper"))]
    try:
        first = compose("config", overrides=[*every_job(plain)[0], *hydra_ones], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return plain  # the job checks below say what is wrong
    if not is_search(first.hydra.sweeper):
        return plain
    if not multirun:
        raise UserError("a search (hydra/sweeper=optuna or search=NAME) launches many runs: add -m")
    require_optuna()
    if first.data.val_size == 0:
        raise UserError(
            "data.val_size=0 is refused in a search: its objective is the validation set, which would "
            "then be the test set; set data.val_size=N (e.g. 5000)"
        )
    if first.get("validate_every", 1) == 0:
        raise UserError(
            "validate_every=0 is refused in a search: its objective is the validation figure; "
            "use validate_every=null (the last epoch only) or 1 (every epoch, which pruning needs)"
        )
    sweeper = OmegaConf.to_container(first.hydra.sweeper)
    params, enqueue = sweeper.get("params") or {}, sweeper.get("enqueue") or []
    space = checked_space([*sweeper_params(params), *plain], enqueue)  # the command line replaces params
    return [*space.fixed, *space.expressions]


def _check_added_keys(job: list[str]) -> None:
    """`+key=v` and `++key=v` may add only what something reads: a key the config has, or an
    argument of the class or function that the `_target_` beside it builds (e.g.
    `+optimizer.amsgrad=true`). Anything else is a typo that would run silently."""
    parsed = OverridesParser.create().parse_overrides(job)
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and o.key_or_group not in GROUPS]
    added = [o for o in added if "/" not in o.key_or_group]
    if not added:
        return
    base = compose("config", overrides=[o.input_line for o in parsed if o not in added])
    for override in added:
        key = override.key_or_group
        if OmegaConf.select(base, key, default="__absent__") != "__absent__":
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(base, parent_key) if parent_key else base
        if isinstance(parent, DictConfig) and _target_accepts(parent.get("_target_"), name):
            continue
        known = _dotted_keys(base)
        if isinstance(parent, DictConfig):
            known += [f"{parent_key}.{p}" if parent_key else p for p in _target_parameters(parent.get("_target_"))]
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"the nearest known key is {nearest[0]}" if nearest else "see cifarbench train --help"
        raise UserError(
            f"{override.input_line}: {key} is not a key of the config ({hint}); + and ++ may add only "
            "keys that a `_target_` class or function in the config accepts"
        )


def _target_parameters(target: str | None) -> list[str]:
    """The keyword arguments that `_target_` takes ("**" when it takes any)."""
    if not target:
        return []
    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except (ImportError, ValueError, TypeError):
        return []
    return [("**" if p.kind == inspect.Parameter.VAR_KEYWORD else p.name) for p in parameters]


def _target_accepts(target: str | None, name: str) -> bool:
    accepted = _target_parameters(target)
    return name in accepted or "**" in accepted


def _dotted_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _dotted_keys(child, f"{dotted}.")
    return keys


def _one_line(exc: Exception) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.replace("To append to your config use +", "Unknown key; to add a new key use +")
