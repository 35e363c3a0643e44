"""Read CIFAR-10 from wherever the user has it into uint8 tensors (N, 3, 32, 32) + int64 labels.

Supported sources: an archive (.tar.gz/.tgz/.tar/.zip) or a folder in image-folder layout
(``train/<class>/*``, ``test/<class>/*``, optionally under one top folder), torchvision's
``cifar-10-batches-py`` folder, or torchvision's download. Everything is validated here so the
cache only ever holds a data set that is known to be right.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cifarbench.errors import UserError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS: tuple[str, ...] = ("train", "test")
STANDARD_COUNTS = {"train": 50_000, "test": 10_000}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class RawSplit:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)


def load_source(path: Path) -> dict[str, RawSplit]:
    """Decode and validate a user-provided copy of CIFAR-10."""
    if not path.exists():
        raise UserError(f"data source {path} does not exist")
    if path.is_dir():
        if (path / "data_batch_1").exists() or path.name == "cifar-10-batches-py":
            return _from_batches_py(path)
        if (path / "cifar-10-batches-py").is_dir():
            return _from_batches_py(path / "cifar-10-batches-py")
        return _from_image_files(path, _iter_folder(path))
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _from_image_files(path, _iter_tar(path))
    if name.endswith(".zip"):
        return _from_image_files(path, _iter_zip(path))
    raise UserError(
        f"data source {path}: unsupported kind; expected a .tar.gz/.tgz/.tar/.zip archive, an "
        "image-folder tree (train/<class>/*, test/<class>/*) or a cifar-10-batches-py folder"
    )


def download(root: Path) -> dict[str, RawSplit]:
    """torchvision's download (needs network). Raises OSError-like errors when offline."""
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in SPLITS:
        ds = CIFAR10(root=str(root), train=split == "train", download=True)
        splits[split] = _from_hwc(ds.data, ds.targets)
    return splits


def _from_batches_py(folder: Path) -> dict[str, RawSplit]:
    from torchvision.datasets import CIFAR10

    # torchvision expects <root>/cifar-10-batches-py and checks every file's md5 for us.
    root = folder.parent if folder.name == "cifar-10-batches-py" else None
    if root is None:
        raise UserError(f"{folder}: torchvision's batches must be in a folder named cifar-10-batches-py")
    splits = {}
    for split in SPLITS:
        try:
            ds = CIFAR10(root=str(root), train=split == "train", download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise UserError(f"{folder}: {exc} (a file is missing or its checksum is wrong)") from None
        splits[split] = _from_hwc(ds.data, ds.targets)
    return splits


def _from_hwc(images_hwc, targets) -> RawSplit:
    images = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
    return RawSplit(images, torch.as_tensor(targets, dtype=torch.int64))


def _iter_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(root.rglob("*")):
        if file.is_file():
            yield file.relative_to(root).as_posix(), file.read_bytes()


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """All members are read before any is decoded, so that a corrupt archive is reported as such
    rather than as the odd image or class folder it garbled."""
    files = []
    try:
        # tarfile takes a garbled header for the end of the archive, so a corrupt .tar.gz could pass
        # for a short one: first read the compressed stream to its end, which checks its CRC.
        opener = {".gz": gzip.open, ".tgz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower())
        if opener is not None:
            with opener(path) as stream:
                while stream.read(1 << 20):
                    pass
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files.append((member.name, handle.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"{path}: archive is truncated or corrupt ({exc})") from None
    yield from files


def _iter_zip(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, archive.read(info)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"{path}: archive is truncated or corrupt ({exc})") from None


def _split_and_class(member: str) -> tuple[str, str] | None:
    """'cifar10-jpeg/train/cat/0001.jpg' -> ('train', 'cat'); None for files outside the layout."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or PurePosixPath(member).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    split, cls = parts[-3], parts[-2]
    if split not in SPLITS or any(p.startswith(".") for p in parts):
        return None
    return split, cls


def _from_image_files(source: Path, files: Iterator[tuple[str, bytes]]) -> dict[str, RawSplit]:
    found: dict[str, dict[str, list[tuple[str, torch.Tensor]]]] = {s: {} for s in SPLITS}
    for member, payload in files:
        where = _split_and_class(member)
        if where is None:
            continue
        split, cls = where
        found[split].setdefault(cls, []).append((member, _decode(source, member, payload)))

    for split in SPLITS:
        classes = sorted(found[split])
        if not classes:
            raise UserError(
                f"{source}: no '{split}/<class>/<image>' files found; expected an image-folder layout "
                "train/<class>/*.png|jpg and test/<class>/*.png|jpg (optionally under one top folder)"
            )
        if tuple(classes) != CLASSES:
            missing = sorted(set(CLASSES) - set(classes))
            extra = sorted(set(classes) - set(CLASSES))
            raise UserError(
                f"{source}: split '{split}' has {len(classes)} class folders, expected CIFAR-10's 10 "
                f"({', '.join(CLASSES)}); missing: {missing or 'none'}, unexpected: {extra or 'none'}"
            )

    splits = {}
    for split in SPLITS:
        images, labels = [], []
        for label, cls in enumerate(CLASSES):
            for _, image in sorted(found[split][cls], key=lambda item: item[0]):
                images.append(image)
                labels.append(label)
        splits[split] = RawSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64))
    return splits


def _decode(source: Path, member: str, payload: bytes) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(payload)) as image:
            mode, size = image.mode, image.size
            pixels = np.array(image) if (mode, size) == ("RGB", (32, 32)) else None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image I can read"
        raise UserError(f"{source}: image {member} does not decode ({exc})") from None
    if pixels is None:
        raise UserError(f"{source}: image {member} is {size[0]}x{size[1]} {mode}; CIFAR-10 images must be 32x32 RGB")
    return torch.from_numpy(pixels).permute(2, 0, 1)


def describe(splits: dict[str, RawSplit]) -> str:
    parts = []
    for split, raw in splits.items():
        per_class = torch.bincount(raw.labels, minlength=len(CLASSES)).tolist()
        even = len(set(per_class)) == 1
        parts.append(f"{split}: {len(raw.labels)} images ({per_class[0] if even else per_class} per class)")
    return "; ".join(parts)


def warn_if_nonstandard(splits: dict[str, RawSplit]) -> None:
    for split, expected in STANDARD_COUNTS.items():
        if len(splits[split].labels) != expected:
            log.warning(
                "%s split has %d images, not CIFAR-10's %d: fine for experiments, but results "
                "are not comparable with published figures",
                split,
                len(splits[split].labels),
                expected,
            )
