"""A decoded data set as one uint8 file in the data root, so later runs start in seconds.

One file per data set: `<root>/cifar10/cifar10-uint8.pt`, `<root>/cifar100/cifar100-uint8.pt`, and
`<root>/folder/<name>-<digest>-<size>px-uint8.pt` for an image folder (named by its source path,
image size and test fraction). The file holds the class names and the training images' per-channel
mean and std beside the pixels, a format number and a checksum of its tensors: a stale or corrupt
cache is detected on load and rebuilt from the source instead of being trusted. A folder's cache
also holds a fingerprint of its source (names, sizes, times), so that a changed folder is imported anew.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path

import torch

from cifarbench.data.sources import CIFAR10_CLASSES, SPLITS, RawData, RawSplit
from cifarbench.files import write_stream_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: any data set with its classes and statistics; 1: CIFAR-10 alone (still read)


def cache_path(root: Path, name: str = "cifar10", source: Path | None = None, image_size: int = 32,
               test_fraction: float = 0.2) -> Path:  # fmt: skip
    """Where data set `name` is cached; a folder data set's file is named by its source and import settings."""
    if name in ("cifar10", "cifar100"):
        return Path(root) / name / f"{name}-uint8.pt"
    resolved = Path(source).expanduser().resolve()
    digest = hashlib.blake2b(f"{resolved}|{test_fraction!r}".encode(), digest_size=4).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", resolved.name.split(".")[0])[:40] or "data"
    return Path(root) / "folder" / f"{stem}-{digest}-{image_size}px-uint8.pt"


def fingerprint(source: Path) -> str:
    """What changes when a source's files do: each file's name, size and modification time."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(source) if source.is_dir() else file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, 3, S, S), on the [0, 1] scale, in float64 chunks."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        pixels = chunk.to(torch.float64).div_(255.0).transpose(0, 1).reshape(3, -1)
        total += pixels.sum(1)
        squares += pixels.square().sum(1)
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def with_stats(raw: RawData) -> RawData:
    """`raw` with its training images' channel statistics, computed once: at import, on download, or
    when a cache from before the statistics is read."""
    if raw.mean is not None and raw.std is not None:
        return raw
    mean, std = channel_stats(raw.splits["train"].images)
    return replace(raw, mean=mean, std=std)


def _checksum(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().data)
    return digest.hexdigest()


def _tensors(payload: dict) -> list[torch.Tensor]:
    keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels", "coarse_labels")]
    return [payload[k] for k in keys if payload.get(k) is not None]


def write_cache(path: Path, raw: RawData, source: str, source_fingerprint: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = with_stats(raw)
    payload: dict = {
        "format": CACHE_FORMAT,
        "name": raw.name,
        "classes": list(raw.classes),
        "coarse_classes": None if raw.coarse_classes is None else list(raw.coarse_classes),
        "mean": list(raw.mean),
        "std": list(raw.std),
        "resized": raw.resized,
        "converted": dict(raw.converted),
        "split_by": raw.split_by,
        "source": source,
        "fingerprint": source_fingerprint,
    }
    for split in SPLITS:
        payload[f"{split}_images"] = raw.splits[split].images
        payload[f"{split}_labels"] = raw.splits[split].labels
        payload[f"{split}_coarse_labels"] = None if raw.coarse_labels is None else raw.coarse_labels[split]
    payload["checksum"] = _checksum(_tensors(payload))
    write_stream_atomic(path, lambda fh: torch.save(payload, fh))  # a crash or a full disk leaves no half cache
    return path


def read_cache(path: Path) -> tuple[RawData | None, str]:
    """Returns (data, "") or (None, why it is unusable)."""
    if not path.exists():
        return None, "missing"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if payload.get("format") == 1 and payload.get("classes") == list(CIFAR10_CLASSES):
            payload = {**payload, "name": "cifar10"}  # a CIFAR-10 cache from before other data sets
        elif payload.get("format") != CACHE_FORMAT:
            return None, f"{path} was written by another cifarbench version (stale)"
        splits = {s: RawSplit(payload[f"{s}_images"], payload[f"{s}_labels"]) for s in SPLITS}
        coarse = None
        if payload.get("coarse_classes") is not None:
            coarse = {s: payload[f"{s}_coarse_labels"] for s in SPLITS}
    except Exception as exc:  # any unpickling/zip/key error means the file cannot be trusted
        return None, f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    tensors = [t for s in SPLITS for t in (splits[s].images, splits[s].labels)] if payload["format"] == 1 else None
    if _checksum(tensors or _tensors(payload)) != payload["checksum"]:
        return None, f"{path} is corrupt (checksum mismatch)"
    raw = RawData(
        payload["name"],
        splits,
        tuple(payload["classes"]),
        coarse_classes=None if coarse is None else tuple(payload["coarse_classes"]),
        coarse_labels=coarse,
        resized=payload.get("resized", 0),
        converted=payload.get("converted", {}),
        split_by=payload.get("split_by"),
        source=payload.get("source", ""),
        fingerprint=payload.get("fingerprint"),
    )
    if "mean" in payload:
        raw = replace(raw, mean=tuple(payload["mean"]), std=tuple(payload["std"]))
    return with_stats(raw), ""
