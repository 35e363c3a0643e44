"""Read a data set from wherever the user has it into uint8 tensors (N, 3, S, S) + int64 labels.

Sources, found by what they hold rather than by their names:
- CIFAR-10's and CIFAR-100's official python archives (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``) as they are, or their extracted ``cifar-10-batches-py`` /
  ``cifar-100-python`` folders;
- image-folder trees, as a folder or a .tar.gz/.tgz/.tar/.zip archive: ``train/<class>/*`` and
  ``test/<class>/*`` (optionally under one top folder), or one tree of ``<class>/*`` that is split
  here by a seeded, class-balanced ``test_fraction``;
- torchvision's download (CIFAR-10 and CIFAR-100, online).
Everything is validated here, so that a cache only ever holds a data set known to be right.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import pickle
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cifarbench.errors import UserError
from cifarbench.images import RESIZE, fit_image

log = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "test")
STANDARD_COUNTS = {"train": 50_000, "test": 10_000}  # both CIFARs
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_SPLIT_SEED = 0  # one tree's test images are the same for every run, whatever its `seed`


@dataclass
class RawSplit:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)


@dataclass
class RawData:
    """A decoded data set: its splits, its class names, and what import did to its images."""

    name: str  # cifar10 | cifar100 | folder
    splits: dict[str, RawSplit]
    classes: tuple[str, ...]
    # CIFAR-100's second labelling (its 20 superclasses): their names and each split's labels
    coarse_classes: tuple[str, ...] | None = None
    coarse_labels: dict[str, torch.Tensor] | None = None
    resized: int = 0  # images brought to image_size x image_size at import (fit_image)
    converted: dict[str, int] = field(default_factory=dict)  # image mode -> images converted from it to RGB
    split_by: float | None = None  # one tree: the test_fraction that made its test split
    # the training images' per-channel mean and std in [0, 1] (cache.channel_stats), and where it came from
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = ""
    fingerprint: str | None = None  # a folder's files as they were at import (cache.fingerprint)

    @property
    def image_size(self) -> int:
        return int(self.splits["train"].images.shape[-1])

    def with_labels(self, labels: str) -> RawData:
        """The same images under `labels` (fine | coarse: CIFAR-100's superclasses)."""
        if labels == "fine":
            return self
        if self.coarse_classes is None or self.coarse_labels is None:
            raise UserError(f"data.labels={labels} is not available: {self.name} has one labelling (fine)")
        splits = {s: RawSplit(self.splits[s].images, self.coarse_labels[s]) for s in SPLITS}
        return replace(self, splits=splits, classes=self.coarse_classes, coarse_classes=None, coarse_labels=None)


def load_source(path: Path, dataset: str = "auto", image_size: int = 32, test_fraction: float = 0.2) -> RawData:
    """Decode and validate a user's copy of a data set. `dataset` (auto | cifar10 | cifar100 |
    folder) says what it must be; auto takes the official archives for what they are and an image
    tree with CIFAR-10's ten class folders for CIFAR-10, any other tree for a folder data set."""
    if not path.exists():
        raise UserError(f"data source {path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        files = _iter_folder(path)
    elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        files = _iter_tar(path)
    elif name.endswith(".zip"):
        files = _iter_zip(path)
    else:
        raise UserError(
            f"data source {path}: unsupported kind; expected a folder or a .tar.gz/.tgz/.tar/.zip archive holding "
            "an image-folder tree (train/<class>/*, test/<class>/*, or <class>/*) or the official CIFAR python batches"
        )
    entries = dict(files)
    pickled = _official_layout(entries)
    if pickled is not None:
        raw = _from_pickles(path, entries, pickled)
        if dataset not in ("auto", raw.name):
            raise UserError(f"{path} holds {raw.name}, not {dataset}: use data={raw.name} (or --as {raw.name})")
        return raw
    if dataset == "cifar100":
        raise UserError(f"{path}: no CIFAR-100 python batches (cifar-100-python/train, test, meta) found in it")
    return _from_image_tree(path, entries, dataset, image_size, test_fraction)


def download(name: str, root: Path) -> RawData:
    """torchvision's download of cifar10 or cifar100 (needs network; raises when offline): torchvision
    fetches the official archive and checks its md5, then its python batches are read as an offline
    copy of them would be (`_from_pickles`, CIFAR-100's superclasses included)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_class = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    dataset_class(root=str(root), train=True, download=True)  # the whole archive, both splits' files
    folder = Path(root) / dataset_class.base_folder
    entries = {f"{folder.name}/{file.name}": file.read_bytes() for file in folder.iterdir() if file.is_file()}
    return _from_pickles(folder, entries, (name, f"{folder.name}/"))


# --- the official python batches ------------------------------------------------------------------

CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}


def _official_layout(entries: dict[str, bytes | None]) -> tuple[str, str] | None:
    """('cifar10' | 'cifar100', the folder prefix of its batch files) when `entries` hold them."""
    for name in entries:
        path = PurePosixPath(name)
        prefix = f"{path.parent.as_posix()}/" if path.parent.as_posix() != "." else ""
        if path.name == "data_batch_1" and f"{prefix}test_batch" in entries:
            return "cifar10", prefix
        if path.name == "meta" and f"{prefix}train" in entries and f"{prefix}test" in entries:
            return "cifar100", prefix
    return None


class _ArraysOnly(pickle.Unpickler):
    """The batches are pickles: this reads numpy arrays, lists and dicts, and refuses anything else
    a crafted file could ask to import (pickle runs what it names)."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(source: Path, member: str, payload: bytes | None) -> dict:
    if payload is None:
        raise UserError(f"{source}: {member} is missing; the CIFAR python batches are incomplete")
    try:
        content = _ArraysOnly(io.BytesIO(payload), encoding="latin1").load()  # latin1: Python 2's pickles
    except Exception as exc:  # pickle's many ways of saying "not a batch file"
        raise UserError(f"{source}: {member} is not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise UserError(f"{source}: {member} is not a CIFAR python batch (a {type(content).__name__}, not a dict)")
    return content


def _batch_field(source: Path, member: str, content: dict, key: str):
    if key not in content:
        raise UserError(f"{source}: {member} has no '{key}' entry; is it a CIFAR python batch?")
    return content[key]


def _from_pickles(source: Path, entries: dict[str, bytes | None], layout: tuple[str, str]) -> RawData:
    name, prefix = layout
    files = CIFAR10_BATCHES if name == "cifar10" else CIFAR100_FILES
    meta_name = prefix + files["meta"]
    meta = _unpickle(source, meta_name, entries.get(meta_name))
    label_keys = ["labels"] if name == "cifar10" else ["fine_labels", "coarse_labels"]
    names_keys = ["label_names"] if name == "cifar10" else ["fine_label_names", "coarse_label_names"]
    class_lists = [tuple(str(c) for c in _batch_field(source, meta_name, meta, k)) for k in names_keys]
    splits: dict[str, RawSplit] = {}
    coarse: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        images, labels = [], [[] for _ in label_keys]
        for file in files[split]:
            member = prefix + file
            content = _unpickle(source, member, entries.get(member))
            data = np.asarray(_batch_field(source, member, content, "data"))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise UserError(f"{source}: {member}'s data is {data.dtype} {data.shape}, not uint8 (N, 3072)")
            images.append(data.reshape(-1, 3, 32, 32))
            for i, key in enumerate(label_keys):
                values = np.asarray(_batch_field(source, member, content, key), dtype=np.int64)
                if (
                    len(values) != len(data)
                    or values.min(initial=0) < 0
                    or values.max(initial=0) >= len(class_lists[i])
                ):
                    raise UserError(
                        f"{source}: {member}'s {key} do not fit its {len(data)} images and "
                        f"{len(class_lists[i])} classes"
                    )
                labels[i].append(values)
        splits[split] = RawSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels[0])))
        if name == "cifar100":
            coarse[split] = torch.from_numpy(np.concatenate(labels[1]))
    if name == "cifar10":
        return RawData(name, splits, class_lists[0])
    return RawData(name, splits, class_lists[0], coarse_classes=class_lists[1], coarse_labels=coarse)


# --- image-folder trees ---------------------------------------------------------------------------


def _iter_folder(root: Path) -> Iterator[tuple[str, bytes | None]]:
    """(relative path, bytes) per file and (relative path + '/', None) per folder."""
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            yield f"{name}/", None
        elif path.is_file():
            try:
                yield name, path.read_bytes()
            except OSError as exc:
                raise UserError(f"{root}: {name} cannot be read ({exc.strerror or exc})") from None


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """All members are read before any is decoded, so that a corrupt archive is reported as such
    rather than as the odd image or class folder it garbled."""
    files: list[tuple[str, bytes | None]] = []
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
                if member.isdir():
                    files.append((f"{member.name.rstrip('/')}/", None))
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files.append((member.name, handle.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"{path}: archive is truncated or corrupt ({exc})") from None
    yield from files


def _iter_zip(path: Path) -> Iterator[tuple[str, bytes | None]]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                yield (info.filename, None) if info.is_dir() else (info.filename, archive.read(info))
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"{path}: archive is truncated or corrupt ({exc})") from None


def _hidden(path: PurePosixPath) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in path.parts)


def _class_folders(source: Path, entries: dict[str, bytes | None]) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [member, ...]}} of the tree; one tree (no train/ and test/ folders) is 'all'.

    The layout is read from the folders that hold images: `<split>/<class>/<file>` when any image
    sits two folders below a train/ or test/ folder, else `<class>/<file>` under one common parent."""
    images = [PurePosixPath(n) for n, p in entries.items() if p is not None and not _hidden(PurePosixPath(n))]
    images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UserError(
            f"{source}: no images found; expected an image-folder tree (train/<class>/*.png|jpg and "
            "test/<class>/*.png|jpg, or <class>/*.png|jpg) or the official CIFAR python batches"
        )
    split_layout = any(len(p.parts) >= 3 and p.parts[-3] in SPLITS for p in images)
    if split_layout:
        class_dirs = {p.parent for p in images if len(p.parts) >= 3 and p.parts[-3] in SPLITS}
        roots = {d.parent.parent for d in class_dirs}
    else:
        class_dirs = {p.parent for p in images if len(p.parts) >= 2}
        roots = {d.parent for d in class_dirs}
    if not class_dirs:
        raise UserError(
            f"{source}: the images are not in class folders; expected train/<class>/*, test/<class>/* or <class>/*"
        )
    if len(roots) != 1:
        shown = ", ".join(sorted(r.as_posix() for r in roots)[:3])
        raise UserError(f"{source}: class folders under more than one parent ({shown}); expected one image-folder tree")
    root = roots.pop()
    found: dict[str, dict[str, list[str]]] = {}
    for name, payload in entries.items():
        path = PurePosixPath(name.rstrip("/"))
        if _hidden(path) or not (root == PurePosixPath(".") or path.is_relative_to(root)):
            continue
        parts = path.parts if root == PurePosixPath(".") else path.relative_to(root).parts
        depth = 3 if split_layout else 2  # parts of a file's path below the root
        if split_layout and (not parts or parts[0] not in SPLITS):
            continue
        split = parts[0] if split_layout else "all"
        if payload is None:  # a folder: a class folder is one level below the split (or the root)
            if len(parts) == depth - 1:
                found.setdefault(split, {}).setdefault(parts[-1], [])
            continue
        if len(parts) != depth:
            continue  # a README beside the class folders, say
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(
                f"{source}: {name} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))} are); remove it from "
                "the class folder"
            )
        found.setdefault(split, {}).setdefault(parts[-2], []).append(name)
    for split, classes in found.items():
        for cls, members in classes.items():
            if not members:
                where = f"{split}/{cls}" if split != "all" else cls
                raise UserError(f"{source}: class folder {where} has no images; add some or remove the folder")
    if split_layout:
        for split in SPLITS:
            if split not in found:
                raise UserError(f"{source}: no '{split}/<class>/<image>' files found beside the other split's")
    return found


def _from_image_tree(
    source: Path, entries: dict[str, bytes | None], dataset: str, image_size: int, test_fraction: float
) -> RawData:
    found = _class_folders(source, entries)
    if "all" in found:
        classes = tuple(sorted(found["all"]))
    else:
        classes = tuple(sorted(found["train"]))
        missing = sorted(set(found["test"]) - set(classes))
        if missing:
            raise UserError(
                f"{source}: test class(es) {', '.join(missing)} missing from train; a model cannot learn a "
                "class it never sees: add their train/ folders or remove them from test/"
            )
    name = dataset
    if dataset == "auto":
        name = "cifar10" if classes == CIFAR10_CLASSES and "all" not in found else "folder"
    if name == "cifar10":
        if "all" in found:
            raise UserError(
                f"{source}: CIFAR-10 as an image tree needs train/ and test/ folders; for one tree use data=folder"
            )
        for split in SPLITS:
            names = sorted(found[split])
            if tuple(names) != CIFAR10_CLASSES:
                missing, extra = sorted(set(CIFAR10_CLASSES) - set(names)), sorted(set(names) - set(CIFAR10_CLASSES))
                raise UserError(
                    f"{source}: split '{split}' has {len(names)} class folders, expected CIFAR-10's 10 "
                    f"({', '.join(CIFAR10_CLASSES)}); missing: {missing or 'none'}, unexpected: {extra or 'none'}"
                    + ("" if dataset == "cifar10" else "; for other classes import it --as folder")
                )
    decoder = _Decoder(source, image_size, strict=name == "cifar10")
    by_split: dict[str, RawSplit] = {}
    for split, folders in found.items():
        images, labels = [], []
        for label, cls in enumerate(classes):
            for member in sorted(folders.get(cls, [])):
                images.append(decoder(member, entries[member]))
                labels.append(label)
        by_split[split] = RawSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64))
    split_by = None
    if "all" in by_split:
        by_split = split_tree(source, by_split["all"], classes, test_fraction)
        split_by = test_fraction
    return RawData(name, by_split, classes, resized=decoder.resized, converted=dict(decoder.converted),
                   split_by=split_by)  # fmt: skip


def split_tree(source: Path, tree: RawSplit, classes: tuple[str, ...], test_fraction: float) -> dict[str, RawSplit]:
    """One tree into train and test: `test_fraction` of each class (rounded, at least one image, at
    most all but one) drawn by a fixed seed, so that every run tests on the same images."""
    generator = torch.Generator().manual_seed(TEST_SPLIT_SEED)
    test_idx, train_idx = [], []
    for label, cls in enumerate(classes):
        members = torch.nonzero(tree.labels == label).squeeze(1)
        if len(members) < 2:
            raise UserError(f"{source}: class {cls} has {len(members)} image; a train/test split needs 2 or more")
        take = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        shuffled = members[torch.randperm(len(members), generator=generator)]
        test_idx.append(shuffled[:take])
        train_idx.append(shuffled[take:])

    def take_sorted(idx: list[torch.Tensor]) -> RawSplit:
        chosen = torch.cat(idx).sort().values
        return RawSplit(tree.images[chosen], tree.labels[chosen])

    return {"train": take_sorted(train_idx), "test": take_sorted(test_idx)}


class _Decoder:
    """Member bytes -> uint8 (3, S, S), counting what it had to change. `strict` (CIFAR-10): every
    image must already be 32x32, or it is not CIFAR-10."""

    def __init__(self, source: Path, size: int, strict: bool) -> None:
        self.source, self.size, self.strict = source, size, strict
        self.resized = 0
        self.converted: Counter[str] = Counter()

    def __call__(self, member: str, payload: bytes) -> torch.Tensor:
        try:
            with Image.open(io.BytesIO(payload)) as image:
                image.load()
                if self.strict and image.size != (self.size, self.size):
                    raise UserError(
                        f"{self.source}: image {member} is {image.size[0]}x{image.size[1]} {image.mode}; CIFAR-10 "
                        "images must be 32x32 RGB (for other images use data=folder, which resizes them)"
                    )
                if image.mode != "RGB":
                    self.converted[image.mode] += 1
                    image = image.convert("RGB")
                if image.size != (self.size, self.size):
                    self.resized += 1
                    image = fit_image(image, self.size)
                pixels = np.array(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL: "cannot read this"
            raise UserError(f"{self.source}: image {member} does not decode ({exc}); remove or replace it") from None
        return torch.from_numpy(pixels).permute(2, 0, 1)


def describe(raw: RawData) -> str:
    """The import summary: images per split and class, and what import changed."""
    parts = [f"{raw.name}, {len(raw.classes)} classes, {raw.image_size}x{raw.image_size}"]
    for split in SPLITS:
        labels = raw.splits[split].labels
        per_class = torch.bincount(labels, minlength=len(raw.classes)).tolist()
        even = len(set(per_class)) == 1
        shown = per_class[0] if even else f"{min(per_class)}-{max(per_class)}"
        parts.append(f"{split}: {len(labels)} images ({shown} per class)")
    if raw.mean is not None and raw.std is not None:
        parts.append(f"train mean {tuple(raw.mean)}, std {tuple(raw.std)}")
    if raw.split_by is not None:
        parts.append(f"test split: {raw.split_by:g} of each class (seed {TEST_SPLIT_SEED})")
    if raw.converted:
        modes = ", ".join(f"{n} {mode}" for mode, n in sorted(raw.converted.items()))
        parts.append(f"converted to RGB: {modes}")
    if raw.resized:
        parts.append(f"resized: {raw.resized} ({RESIZE.format(size=raw.image_size)})")
    return "; ".join(parts)


def warn_if_nonstandard(raw: RawData) -> None:
    if raw.name not in ("cifar10", "cifar100"):
        return
    for split, expected in STANDARD_COUNTS.items():
        if len(raw.splits[split].labels) != expected:
            log.warning(
                "%s split has %d images, not %s's %d: fine for experiments, but results "
                "are not comparable with published figures",
                split,
                len(raw.splits[split].labels),
                raw.name,
                expected,
            )
