"""`kerascnn`: the Keras custom CNN of ../shared/papers/004 (Tables 1 and 2)."""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.errors import check_choice
from cifarbench.options import DROPOUT_SCOPES


class KerasCNN(nn.Module):
    """Three blocks conv 3x3 (32, 64, 128) + ReLU, batch norm, max-pool 2, dropout; Flatten;
    Dense 128 + ReLU, dropout; output 10. With the arguments' defaults (one convolution a block),
    357,258 parameters (Keras: 357,706 with BN statistics); `model=kerascnn` builds two a block.

    004 is ambiguous in two places, and each reading is an option (docs/experiments.md compares
    them on validation; conf/model/kerascnn.yaml takes the one it favoured). The arguments' defaults
    here are the first reading, which every run saved before the options existed trained: reports
    read those runs' missing settings from them, so they must not change.
    - `dropout_scope`. "Dropout rates are set to 0.3 for early layers and up to 0.5 in deeper
      layers" (its section 2) against Table 2's single "D/O Rate" per run. `rising`: the first
      block uses `dropout`, the rates rise linearly to `dropout_deep` at the last block, and the
      dense layer uses `dropout_deep`. `uniform`: `dropout` after every block and the dense layer,
      as one Table 2 rate would be read.
    - `convs_per_block`. "We use three convolutional layers, with increasing numbers of filters
      (32, 64, 128) in each successive block": 1 (three layers in all) or 2 (each block two
      convolutions, VGG-style; 551,466 parameters).
    Batch norm follows every convolution ("After each convolutional layer ... we apply batch
    normalization"). Inferred: the middle rates and 'same' padding (the report states neither;
    'valid' would give 161,098). Keras's own initialisation: `init: keras` (models/keras_init.py).
    """

    IMAGE_SIZE = 32  # its dense layers' widths follow from 32x32 inputs

    def __init__(
        self,
        dropout: float = 0.3,
        dropout_deep: float = 0.5,
        widths: tuple[int, ...] = (32, 64, 128),
        dense: int = 128,
        num_classes: int = 10,
        dropout_scope: str = "rising",
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        check_choice("model.dropout_scope", dropout_scope, DROPOUT_SCOPES)
        steps = len(widths) - 1
        if dropout_scope == "uniform":
            rates, dense_rate = [dropout] * len(widths), dropout
        else:
            rates = [dropout + (dropout_deep - dropout) * i / max(steps, 1) for i in range(len(widths))]
            dense_rate = dropout_deep
        layers: list[nn.Module] = []
        cin = 3
        for width, rate in zip(widths, rates, strict=True):
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(width)]
                cin = width
            layers += [nn.MaxPool2d(2), nn.Dropout(rate)]
        side = 32 // 2 ** len(widths)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dense_rate),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
