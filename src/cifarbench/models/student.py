"""`student`: the "initial student model" of ../shared/papers/000 (Table 1: 19.0M parameters)."""

from __future__ import annotations

import torch
from torch import nn


def conv_relu(cin: int, cout: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU(inplace=True)]


class StudentTop(nn.Sequential):
    """000's dense top: Flatten, Dense `dense` + ReLU, Dropout, Dense `dense` + ReLU, output. The
    student uses it at width 4096, the improved model at 512, and 000's fine-tuned backbones carry it
    ("a top made identical to the initial student model")."""

    def __init__(self, in_features: int, dropout: float = 0.3, dense: int = 4096, num_classes: int = 10) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_features, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense, dense),
            nn.ReLU(inplace=True),
            nn.Linear(dense, num_classes),
        )


class StudentCNN(nn.Module):
    """Three conv blocks of width 64, 128, 256, each two 3x3 convs ending in batch norm and
    max-pool; Flatten; Dense 4096, Dropout 0.3, Dense 4096; output 10.

    19,021,258 parameters (Keras, which also counts the batch-norm running statistics: 19,022,154),
    matching the report's 19.0M. What was inferred: the report gives neither kernel size, padding
    nor convs per block. Only one layout reaches 19.0M: two 3x3 convs per block with Keras' default
    'valid' padding, so the maps shrink 32-30-28-14-12-10-5-3-1 and Flatten sees 256 features
    (with 'same' padding the two 4096 layers alone would be 33.6M). The last max-pool acts on a
    1x1 map (`ceil_mode`, Keras' 'same' pooling). The same top on 000's fine-tuned backbones
    reproduces their Table 1 counts exactly, which confirms the 256-wide flatten.
    """

    IMAGE_SIZE = 32  # its dense layers' widths follow from 32x32 inputs

    def __init__(
        self, dropout: float = 0.3, widths: tuple[int, ...] = (64, 128, 256), dense: int = 4096, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, width in enumerate(widths):
            layers += conv_relu(cin, width, 0) + conv_relu(width, width, 0)
            layers += [nn.BatchNorm2d(width), nn.MaxPool2d(2, ceil_mode=i == len(widths) - 1)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = StudentTop(cin, dropout, dense, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
