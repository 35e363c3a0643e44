"""`kerascnn`: the Keras custom CNN of ../shared/papers/004 (Tables 1 and 2)."""

from __future__ import annotations

import torch
from torch import nn


class KerasCNN(nn.Module):
    """Three blocks conv 3x3 (32, 64, 128) + ReLU, batch norm, max-pool 2, dropout; Flatten;
    Dense 128 + ReLU, dropout; output 10. 357,258 parameters (Keras: 357,706 with BN statistics).

    "Dropout rates are set to 0.3 for early layers and up to 0.5 in deeper layers": the first
    block uses `dropout` (the rate 004's Table 2 sweeps, 0.3 or 0.4), the rates rise linearly to
    `dropout_deep` (0.5) at the last block, and the dense layer uses `dropout_deep`. Inferred: the
    middle rates and 'same' padding (the report states neither; 'valid' would give 161,098).
    """

    def __init__(
        self,
        dropout: float = 0.3,
        dropout_deep: float = 0.5,
        widths: tuple[int, ...] = (32, 64, 128),
        dense: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        steps = len(widths) - 1
        rates = [dropout + (dropout_deep - dropout) * i / max(steps, 1) for i in range(len(widths))]
        layers: list[nn.Module] = []
        cin = 3
        for width, rate in zip(widths, rates, strict=True):
            layers += [
                nn.Conv2d(cin, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(width),
                nn.MaxPool2d(2),
                nn.Dropout(rate),
            ]
            cin = width
        side = 32 // 2 ** len(widths)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout_deep),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
