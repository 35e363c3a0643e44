"""Data: get CIFAR-10 into a validated uint8 cache, then into in-memory splits on the device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cifarbench.data.cache import cache_path, read_cache, write_cache
from cifarbench.data.loader import Batches, batch_indices
from cifarbench.data.normalize import Normalize
from cifarbench.data.sources import CLASSES, RawSplit, describe, download, load_source, warn_if_nonstandard
from cifarbench.data.splits import DataSplits, Split, make_splits
from cifarbench.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "Batches",
    "DataSplits",
    "Normalize",
    "Split",
    "batch_indices",
    "import_data",
    "load_cifar10",
    "make_splits",
    "splits_for",
]


def import_data(source: Path, root: Path) -> tuple[Path, str]:
    """Decode a user's copy once into the cache; returns the cache path and a summary."""
    splits = load_source(Path(source).expanduser())
    warn_if_nonstandard(splits)
    path = write_cache(Path(root), splits, source=str(source))
    return path, describe(splits)


def load_cifar10(data_cfg: DictConfig) -> dict[str, RawSplit]:
    """The cached data set; imported from `data.source` or downloaded first when needed."""
    root = Path(data_cfg.root).expanduser()
    splits, why = read_cache(root)
    if splits is not None:
        return splits
    if why != "missing":
        log.warning("data cache unusable: %s; rebuilding it", why)
    if data_cfg.source:
        path, summary = import_data(Path(data_cfg.source), root)
        log.info("imported %s into %s: %s", data_cfg.source, path, summary)
        return read_cache(root)[0]
    if data_cfg.download:
        try:
            splits = download(root)
        except Exception as exc:  # no network: URLError, socket errors, HTTP errors ...
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
            log.debug("download failed: %s", reason)
        else:
            write_cache(root, splits, source="torchvision download")
            return splits
    raise UserError(
        f"no CIFAR-10 data in {root} ({'cache ' + why}) and it could not be downloaded; either run "
        "`cifarbench data import PATH` with a copy you have (.tar.gz/.zip archive, image-folder tree or "
        "cifar-10-batches-py), or pass data.source=PATH, or go online so torchvision can download it "
        f"(data.root={root}, or set $CIFARBENCH_DATA)"
    )


def splits_for(cfg: DictConfig, device: torch.device) -> DataSplits:
    """The train/val/test splits a run's config asks for (data.*, seed), on `device`."""
    data = cfg.data
    return make_splits(load_cifar10(data), data.val_size, data.train_subset, data.test_subset, cfg.seed, device)


def cache_file(data_cfg: DictConfig) -> Path:
    return cache_path(Path(data_cfg.root).expanduser())
