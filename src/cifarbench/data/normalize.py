"""uint8 images -> normalised float model input, in one pass."""

from __future__ import annotations

import torch

from cifarbench.data.info import CIFAR10_MEAN_STD, DataInfo
from cifarbench.errors import check_choice
from cifarbench.options import NORMALIZATIONS

MEAN_STD: dict[str, tuple | None] = {
    "cifar10": CIFAR10_MEAN_STD,  # CIFAR-10's training images, whatever the data: what the reports used
    "dataset": None,  # the run's own training images', from its DataInfo (computed at import)
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the [-1, 1] range of 001 and 002
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain [0, 1]
}


class Normalize:
    """(x / 255 - mean) / std folded into one multiply-add per element: x * scale + shift.
    `dataset` takes the mean and std of the run's own training images, from its DataInfo."""

    def __init__(
        self, name: str, device: torch.device, channels_last: bool = True, data: DataInfo | None = None
    ) -> None:
        check_choice("data.normalization", name, NORMALIZATIONS)
        if name == "dataset" and data is None:
            raise ValueError("normalization 'dataset' needs the data set's DataInfo")
        self.mean, self.std = (data.mean, data.std) if name == "dataset" else MEAN_STD[name]  # [0, 1] scale
        mean, std = (
            torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (self.mean, self.std)
        )
        self.name = name
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=self.memory_format)
        out.copy_(images)
        return out.mul_(self.scale).add_(self.shift)
