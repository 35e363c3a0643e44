"""`baseline`: "Model 1" of ../shared/papers/001 (the report's baseline CNN)."""

from __future__ import annotations

import torch
from torch import nn


class BaselineCNN(nn.Module):
    """conv 3->32 (k3, p1), ReLU, maxpool 2; conv 32->64 (k3, p1), ReLU, maxpool 2;
    flatten (64*8*8 = 4096); Linear 4096->256, ReLU, dropout; Linear 256->10.

    1,070,794 parameters. The report gives dropout 0.5; it is the `dropout` knob here.
    """

    IMAGE_SIZE = 32  # its dense layers' widths follow from 32x32 inputs

    def __init__(self, dropout: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
