"""`mfm24`: "model 10 – the MFM-24" of ../shared/papers/003, its best custom CNN."""

from __future__ import annotations

import torch
from torch import nn


class MFM24(nn.Module):
    """Blocks of [conv 3x3 + ReLU, BN, conv 3x3 + ReLU, BN, max-pool 2, dropout] at 64, 128, 256
    filters; global average pooling; Dense 100 + ReLU, dropout; output 10. 1,173,910 parameters.

    The report: "starts with two convolutional layers with 64 filters ... followed by
    BatchNormalization and MaxPooling ... higher filter counts (128 and 256) in subsequent layers
    ... applying Dropout ... concludes with a GlobalAveragePooling layer and two dense layers".
    Inferred (not stated): 3x3 'same' convs, two per block; dropout 0.25 (introduced in its model 2
    and kept); the hidden dense width 100 (its model 1's dense layers were 100 and 10). That is 22
    Keras layers, 23 with the input layer: the report counts 23.
    """

    def __init__(
        self,
        dropout: float = 0.25,
        widths: tuple[int, ...] = (64, 128, 256),
        dense: int = 100,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            for c in (cin, width):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(width)]
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cin, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
