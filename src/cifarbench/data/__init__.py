"""Data: a data set (CIFAR-10, CIFAR-100 or an image folder) into a validated uint8 cache, then
into in-memory splits on the device, with its DataInfo (classes, statistics, image size)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cifarbench.data.cache import cache_path, fingerprint, read_cache, with_stats, write_cache
from cifarbench.data.info import CIFAR10, DataInfo
from cifarbench.data.loader import Batches, batch_indices
from cifarbench.data.normalize import Normalize
from cifarbench.data.sources import RawData, describe, download, load_source, warn_if_nonstandard
from cifarbench.data.splits import DataSplits, Split, make_splits
from cifarbench.errors import UserError, check_choice
from cifarbench.options import DATASETS

log = logging.getLogger(__name__)

__all__ = [
    "CIFAR10",
    "Batches",
    "DataInfo",
    "DataSplits",
    "Normalize",
    "Split",
    "batch_indices",
    "data_cache_path",
    "import_data",
    "load_data",
    "make_splits",
    "splits_for",
]


def import_data(
    source: Path, root: Path, dataset: str = "auto", image_size: int = 32, test_fraction: float = 0.2
) -> tuple[Path, str]:
    """Decode a user's copy once into the cache; returns the cache path and a summary."""
    source = Path(source).expanduser()
    raw = load_source(source, dataset, image_size, test_fraction)
    warn_if_nonstandard(raw)
    raw = with_stats(raw)  # for the summary, which shows them
    path = cache_path(Path(root), raw.name, source, image_size, test_fraction)
    stamp = fingerprint(source) if raw.name == "folder" else None
    write_cache(path, raw, source=str(source), source_fingerprint=stamp)
    return path, describe(raw)


def data_cache_path(data_cfg: DictConfig) -> Path:
    """The cache file `data_cfg` reads (data.name, and for a folder data.source, image_size, test_fraction)."""
    name = data_cfg.get("name", "cifar10")
    check_choice("data.name", name, DATASETS)
    root = Path(data_cfg.root).expanduser()
    if name != "folder":
        return cache_path(root, name)
    if not data_cfg.get("source"):
        raise UserError("data=folder needs data.source=PATH: an image-folder tree or archive (see README, Data sets)")
    return cache_path(root, name, Path(data_cfg.source), data_cfg.image_size, data_cfg.test_fraction)


def load_data(data_cfg: DictConfig) -> RawData:
    """The cached data set; imported from `data.source` or downloaded first when needed."""
    name = data_cfg.get("name", "cifar10")
    path = data_cache_path(data_cfg)
    raw, why = read_cache(path)
    if raw is not None and name == "folder" and raw.fingerprint != fingerprint(Path(data_cfg.source).expanduser()):
        raw, why = None, f"{data_cfg.source} changed since it was imported"
    if raw is not None:
        return raw.with_labels(data_cfg.get("labels", "fine"))
    if why != "missing":
        log.warning("data cache unusable: %s; rebuilding it", why)
    root = Path(data_cfg.root).expanduser()
    if data_cfg.source:
        image_size, test_fraction = data_cfg.get("image_size", 32), data_cfg.get("test_fraction", 0.2)
        path, summary = import_data(Path(data_cfg.source), root, name, image_size, test_fraction)
        log.info("imported %s into %s: %s", data_cfg.source, path, summary)
        return load_data(data_cfg)
    if data_cfg.get("download", False) and name in ("cifar10", "cifar100"):
        try:
            raw = download(name, root)
        except Exception as exc:  # no network: URLError, socket errors, HTTP errors ...
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
            log.debug("download failed: %s", reason)
        else:
            write_cache(path, raw, source="torchvision download")
            return load_data(data_cfg)
    official = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
    raise UserError(
        f"no {name} data in {root} ({'cache ' + why}) and it could not be downloaded; either run "
        f"`cifarbench data import PATH` with a copy you have ({official}, an image-folder archive or tree), "
        "or pass data.source=PATH, or go online so torchvision can download it "
        f"(data.root={root}, or set $CIFARBENCH_DATA)"
    )


def splits_for(cfg: DictConfig, device: torch.device) -> DataSplits:
    """The train/val/test splits a run's config asks for (data.*, seed), on `device`, with their DataInfo."""
    data = cfg.data
    raw = load_data(data)
    info = DataInfo.of(raw, data.get("labels", "fine"))
    return make_splits(raw.splits, info, data.val_size, data.train_subset, data.test_subset, cfg.seed, device)
