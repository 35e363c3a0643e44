"""In-memory splits: class-balanced validation carve-out and subsets, fixed by the seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifarbench.data.info import DataInfo
from cifarbench.data.sources import RawSplit
from cifarbench.errors import UserError


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32), on the training device
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    val_is_test: bool  # data.val_size=0: validation reuses the test set, as the reports did
    info: DataInfo  # the classes, statistics and image size of the data set the splits come from


def balanced_indices(
    labels: torch.Tensor, size: int, num_classes: int, generator: torch.Generator, what: str
) -> torch.Tensor:
    """`size` indices with size/num_classes per class, drawn at random by `generator`, in random order."""
    counts = torch.bincount(labels, minlength=num_classes)
    if size % num_classes:
        raise UserError(
            f"{what}={size} cannot be class-balanced over {num_classes} classes: use a multiple of {num_classes}"
        )
    per_class = size // num_classes
    if per_class > int(counts.min()):
        raise UserError(
            f"{what}={size} needs {per_class} images per class but the data has only "
            f"{int(counts.min())} for some class (at most {int(counts.min()) * num_classes} allowed)"
        )
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    picked = torch.cat(chosen)
    return picked[torch.randperm(len(picked), generator=generator)]


def make_splits(
    raw: dict[str, RawSplit],
    info: DataInfo,
    val_size: int | float,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    device: torch.device,
) -> DataSplits:
    """Validation is carved first, so it does not change when train_subset does."""
    generator = torch.Generator().manual_seed(seed)
    train_labels = raw["train"].labels
    n_train = len(train_labels)
    if isinstance(val_size, float) and 0 < val_size < 1:  # a fraction: as many of each class as the rarest allows
        rarest = int(torch.bincount(train_labels, minlength=info.num_classes).min())
        val_size = max(1, int(val_size * rarest)) * info.num_classes
    if val_size < 0 or val_size >= n_train:
        raise UserError(f"data.val_size={val_size} must be in [0, {n_train}) (the training set has {n_train})")
    rest = torch.arange(n_train)
    val_idx = torch.empty(0, dtype=torch.int64)
    if val_size:
        val_idx = balanced_indices(train_labels, val_size, info.num_classes, generator, "data.val_size")
        keep = torch.ones(n_train, dtype=torch.bool)
        keep[val_idx] = False
        rest = torch.nonzero(keep).squeeze(1)
    if train_subset is not None:
        rest = rest[
            balanced_indices(train_labels[rest], train_subset, info.num_classes, generator, "data.train_subset")
        ]
    test_idx = torch.arange(len(raw["test"].labels))
    if test_subset is not None:
        test_idx = balanced_indices(raw["test"].labels, test_subset, info.num_classes, generator, "data.test_subset")
        test_idx = test_idx.sort().values

    def take(split: RawSplit, idx: torch.Tensor) -> Split:
        return Split(split.images[idx].to(device), split.labels[idx].to(device))

    test = take(raw["test"], test_idx)
    val = take(raw["train"], val_idx.sort().values) if val_size else test
    train = take(raw["train"], rest.sort().values)
    return DataSplits(train=train, val=val, test=test, val_is_test=not val_size, info=info)
