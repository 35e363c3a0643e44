"""Batched, per-image data augmentation on uint8 tensors (conf/augmentation/*).

Each transform takes a whole batch (B, 3, H, W) of uint8 images on the training device and draws
its randomness independently for every image from the run's generator, so augmentation is
reproducible from `seed` and costs no per-image Python or PIL work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NoAugmentation:
    """The identity: images as they are."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


class FlipCrop:
    """Zero-pad by `padding`, take a random HxW crop, and flip horizontally with probability 0.5.

    The crop and the flip are one gather: the flip just reverses the column index of the crop.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        self.padding = padding
        self.flip = flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        device = images.device
        p = self.padding
        padded = F.pad(images, (p, p, p, p)) if p else images
        dy = torch.randint(0, 2 * p + 1, (batch, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (batch, 1), device=device, generator=generator)
        rows = dy + torch.arange(height, device=device)
        cols = torch.arange(width, device=device).expand(batch, width)
        if self.flip:
            flipped = torch.rand(batch, 1, device=device, generator=generator) < 0.5
            cols = torch.where(flipped, width - 1 - cols, cols)
        cols = dx + cols
        idx_b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
        idx_c = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        return padded[idx_b, idx_c, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
