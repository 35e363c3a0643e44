"""`fast`: an airbench94-style network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
GPU", 2024), written from its published description.

A frozen 2x2 patch-whitening convolution, then three conv groups of widths 64, 256, 256
(conv - max-pool - batch norm - GELU - conv - batch norm - GELU), a final max-pool and a linear
layer whose output is scaled by 1/9. About 1.97M parameters. The recipe that goes with it
(SGD Nesterov, label smoothing 0.2, lookahead, translate + alternating flip, flip/translate TTA)
is conf/experiment/fast.yaml; every part of it is an option of the general loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """Batch norm with the scale fixed at 1 and only the shift learned: with the next conv free to
    rescale, a learned scale adds nothing but another direction for the optimizer to wander."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """A bias-free 3x3 'same' conv whose first `cin` filters start as the identity (Dirac), so a
    fresh network passes its input through and the first steps are not spent undoing noise."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


class GlobalMaxPool(nn.Module):
    """The maximum of each channel over the whole map, as nn.AdaptiveMaxPool2d(1) computes it (same
    values, same gradient routing), but through max_pool2d: AdaptiveMaxPool2d's backward has no
    deterministic CUDA kernel, so `deterministic=true` on a GPU would fail at the first step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=x.shape[-2:])


class ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int, bn_momentum: float) -> None:
        super().__init__(
            conv3x3(cin, cout),
            nn.MaxPool2d(2),
            FrozenScaleBatchNorm(cout, bn_momentum),
            nn.GELU(),
            conv3x3(cout, cout),
            FrozenScaleBatchNorm(cout, bn_momentum),
            nn.GELU(),
        )


class FastNet(nn.Module):
    """32x32 -> whitening (31x31, 24 channels) -> groups (15, 7, 3) -> max-pool -> linear / 9.

    `init_from_data(images)` sets the whitening filters from the training images' 2x2 patches;
    the training loop calls it once before the first step (any model may define it). The
    whitening weights stay frozen; its bias trains.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 256, 256),
        whitening_kernel: int = 2,
        bn_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
        whitening_eps: float = 5e-4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        patch_dim = 3 * whitening_kernel**2
        # Each whitening direction appears with both signs so the GELU after it loses nothing.
        self.whiten = nn.Conv2d(3, 2 * patch_dim, whitening_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.whitening_eps = whitening_eps
        groups, cin = [], 2 * patch_dim
        for width in widths:
            groups.append(ConvGroup(cin, width, bn_momentum))
            cin = width
        self.features = nn.Sequential(nn.GELU(), *groups)
        self.pool = GlobalMaxPool()
        self.classifier = nn.Linear(cin, num_classes, bias=False)
        # Scaling the logits down keeps the initial softmax soft without shrinking the init.
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Whitening filters from the (uncentred) covariance of every 2x2 patch of `images`
        (normalised, N x 3 x 32 x 32): eigenvectors scaled by 1/sqrt(eigenvalue + eps)."""
        weight = self.whiten.weight
        k = weight.shape[-1]
        images = images.to(weight.device, torch.float32).contiguous()
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        filters = (eigenvectors.T / (eigenvalues + self.whitening_eps).sqrt()[:, None]).flip(0)
        filters = filters.reshape(-1, 3, k, k)
        weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(self.whiten(x))).flatten(1)
        return self.classifier(features) * self.logit_scale
