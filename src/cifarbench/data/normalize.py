"""uint8 images -> normalised float model input, in one pass."""

from __future__ import annotations

import torch

from cifarbench.errors import check_choice
from cifarbench.options import NORMALIZATIONS

MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the [-1, 1] range of 001 and 002
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain [0, 1]
}


class Normalize:
    """(x / 255 - mean) / std folded into one multiply-add per element: x * scale + shift."""

    def __init__(self, name: str, device: torch.device, channels_last: bool = True) -> None:
        check_choice("data.normalization", name, NORMALIZATIONS)
        mean, std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in MEAN_STD[name])
        self.name = name
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=self.memory_format)
        out.copy_(images)
        return out.mul_(self.scale).add_(self.shift)
