"""The decoded data set as one uint8 file in the data root, so later runs start in seconds.

The file carries a format number and a checksum of its tensors: a stale or corrupt cache is
detected on load and rebuilt from the source instead of being trusted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from cifarbench.data.sources import CLASSES, SPLITS, RawSplit
from cifarbench.files import write_stream_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_FILE = "cifar10/cifar10-uint8.pt"


def cache_path(root: Path) -> Path:
    return Path(root) / CACHE_FILE


def _checksum(splits: dict[str, RawSplit]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for split in SPLITS:
        digest.update(splits[split].images.contiguous().numpy().data)
        digest.update(splits[split].labels.contiguous().numpy().data)
    return digest.hexdigest()


def write_cache(root: Path, splits: dict[str, RawSplit], source: str) -> Path:
    path = cache_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict = {"format": CACHE_FORMAT, "classes": list(CLASSES), "source": source}
    for split in SPLITS:
        payload[f"{split}_images"] = splits[split].images
        payload[f"{split}_labels"] = splits[split].labels
    payload["checksum"] = _checksum(splits)
    write_stream_atomic(path, lambda fh: torch.save(payload, fh))  # a crash or a full disk leaves no half cache
    return path


def read_cache(root: Path) -> tuple[dict[str, RawSplit] | None, str]:
    """Returns (splits, "") or (None, why it is unusable)."""
    path = cache_path(root)
    if not path.exists():
        return None, "missing"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if payload.get("format") != CACHE_FORMAT or payload.get("classes") != list(CLASSES):
            return None, f"{path} was written by another cifarbench version (stale)"
        splits = {s: RawSplit(payload[f"{s}_images"], payload[f"{s}_labels"]) for s in SPLITS}
    except Exception as exc:  # any unpickling/zip/key error means the file cannot be trusted
        return None, f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if _checksum(splits) != payload["checksum"]:
        return None, f"{path} is corrupt (checksum mismatch)"
    return splits, ""
