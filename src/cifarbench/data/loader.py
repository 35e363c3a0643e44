"""The training split as batches: `for inputs, labels in batches:` and nothing else in the loop.

A `Batches` owns what a pass over the training split needs: the uint8 split on the device, the global
batch size, the shuffle generator (the same order on every rank), the augmentation and its
generator (each rank's own draws), the epoch, and each rank's slice of every global batch. It yields
normalised float inputs and int64 labels; no DataLoader workers, no PIL (see README, data path).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cifarbench.augmentation import Augmentation
from cifarbench.data.normalize import Normalize
from cifarbench.data.splits import Split
from cifarbench.distributed import SINGLE_PROCESS, World


def batch_indices(n: int, batch_size: int, shuffle: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled (generator given) or ordered index batches; a trailing batch of one is dropped
    when shuffling, because batch norm cannot train on a single image."""
    order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if shuffle is not None and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


class Batches:
    """One epoch of augmented, normalised training batches per iteration; `epoch` (counted from 1)
    is what augmentations that alternate by epoch see (the airbench flip)."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        augmentation: Augmentation,
        normalize: Normalize,
        shuffle: torch.Generator,
        augment_generator: torch.Generator,
        world: World = SINGLE_PROCESS,
    ) -> None:
        self.split, self.batch_size = split, batch_size
        self.augmentation, self.normalize = augmentation, normalize
        self.shuffle, self.augment_generator = shuffle, augment_generator
        self.world = world
        self.epoch = 1

    def __len__(self) -> int:
        """Steps per epoch, as __iter__ yields them: the same batch_indices rule, on a throwaway
        generator (the count does not depend on the order), so the two cannot drift apart."""
        batches = batch_indices(len(self.split), self.batch_size, torch.Generator())
        return sum(len(batch) >= self.world.size for batch in batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.split.labels.device
        for global_idx in batch_indices(len(self.split), self.batch_size, self.shuffle):
            if len(global_idx) < self.world.size:
                continue  # every rank needs at least one image of the batch
            idx = global_idx.tensor_split(self.world.size)[self.world.rank].to(device, non_blocking=True)
            images = self.augmentation(self.split.images[idx], self.augment_generator, idx, self.epoch)
            yield self.normalize(images), self.split.labels[idx]
