"""`fc2` and `cnn3`: the custom nets of ../shared/papers/002 (trained with SGD).

The report gives their shapes but no sizes; it trains them with "the train_part34() code specified
in the project notebook", Stanford CS231n's PyTorch notebook, whose sizes are used here (inferred):
a 4000-unit hidden layer, and conv 32@5x5 (pad 2) then conv 16@3x3 (pad 1) with no pooling.
"""

from __future__ import annotations

import torch
from torch import nn


class TwoLayerFC(nn.Module):
    """Flatten (3*32*32 = 3072), Linear 3072->hidden, ReLU, Linear hidden->10. 12,332,010 parameters."""

    IMAGE_SIZE = 32  # its dense layers' widths follow from 32x32 inputs

    def __init__(self, hidden: int = 4000, dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ThreeLayerCNN(nn.Module):
    """conv 3->32 (5x5, pad 2), ReLU, conv 32->16 (3x3, pad 1), ReLU, Linear 16*32*32->10.

    170,906 parameters. No pooling, batch norm or dropout: the report lists their absence among the
    net's limitations. `dropout` (default 0) is a knob for sweeps.
    """

    IMAGE_SIZE = 32  # its dense layers' widths follow from 32x32 inputs

    def __init__(self, channels: tuple[int, int] = (32, 16), dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * 32 * 32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
