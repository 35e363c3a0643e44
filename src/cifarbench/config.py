"""Where the YAML configs are, and the resolver that gives each run its own directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from cifarbench.errors import UserError, one_line

GROUPS = ("data", "model", "optimizer", "scheduler", "augmentation", "logger", "experiment", "search")


def instantiate(config: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a UserError raised by the target stays a UserError (Hydra wraps
    every exception into an InstantiationException, which would end in a traceback)."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


@contextmanager
def building(group: str, node: Any) -> Iterator[None]:
    """Around building a group's `_target_` (model, augmentation): what the target raises becomes a
    UserError naming the group's keys and values, not a traceback from inside torch or torchvision."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
        shown = ", ".join(f"{group}.{k}={v}" for k, v in values.items() if not str(k).startswith("_"))
        target = values.get("_target_", "?")
        raise UserError(f"{group} ({target}) cannot be built with {shown or 'its defaults'}: {one_line(exc)}") from None


def config_dir() -> Path:
    """conf/ ships inside the wheel as cifarbench/conf; in a source checkout it is the repo's conf/."""
    for candidate in (Path(__file__).parent / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("cifarbench's conf/ folder is missing from this installation")


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


_claimed: dict[str, str] = {}
SWEEP_DIR_ENV = "CIFARBENCH_SWEEP_DIR"


def claim_run_dir(kind: str, *, _root_: DictConfig) -> str:
    """`<output_root>/<name>/<date>_<time>`, with `_1`, `_2`... appended if this process could not
    create it first (os.mkdir is atomic, so two runs started in the same second never share a
    directory). Sweeps go to `<output_root>/<name or multirun>/<date>_<time>`, one subfolder per job.

    The answer is remembered because Hydra resolves the directory more than once.
    """
    if kind == "sweep" and os.environ.get(SWEEP_DIR_ENV):
        return os.environ[SWEEP_DIR_ENV]  # a launcher's worker process: the sweep directory is decided
    if kind not in _claimed:
        try:
            name = str(_root_.name)
        except InterpolationResolutionError:  # a sweep's default name (the model) is per job
            name = "multirun"
        base = os.path.join(str(_root_.output_root), name, datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        candidate, n = base, 0
        while True:
            try:
                os.makedirs(candidate)
                break
            except FileExistsError:
                n += 1
                candidate = f"{base}_{n}"
        _claimed[kind] = candidate
        if kind == "sweep":  # joblib/submitit workers resolve the config again: give them this one
            os.environ[SWEEP_DIR_ENV] = candidate
    return _claimed[kind]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cifarbench_run_dir"):
        OmegaConf.register_new_resolver("cifarbench_run_dir", claim_run_dir)
