"""Batched, per-image data augmentation on uint8 tensors (conf/augmentation/*).

Each transform takes a whole batch (B, 3, H, W) of uint8 images on the training device and draws
its randomness independently for every image from the run's generator, so augmentation is
reproducible from `seed` and costs no per-image Python or PIL work. The loop also passes each
image's index in the training split and the epoch (1, 2, ...), for schedules that depend on them
(the alternating flip).

`tta_views` is the test-time side: the flipped/translated copies whose logits are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from cifarbench.errors import check_choice
from cifarbench.options import FLIPS, PADDING_MODES, POLICIES, TTA_LEVELS


class Augmentation:
    """What the loop calls: a uint8 batch in, a uint8 batch out; `index` (each image's place in the
    training split) and `epoch` are there for transforms that depend on them, the rest ignore them."""

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        raise NotImplementedError


class NoAugmentation(Augmentation):
    """The identity: images as they are."""

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        return images


def fixed_coin(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A fair coin per image that depends only on (index, seed): the same for an image in every
    epoch and after a resume, without storing a mask the size of the data set."""
    mixed = (index.long() * 0x9E3779B1 + (seed & 0x7FFFFFFF) * 0x85EBCA77) & 0xFFFFFFFF  # stays within int64
    mixed = ((mixed ^ (mixed >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return ((mixed ^ (mixed >> 12)) & 1).bool()


class FlipCrop(Augmentation):
    """Pad by `padding` (zeros, or a mirror image of the border with `padding_mode: reflect`), take
    a random HxW crop, and flip horizontally.

    `flip`: true flips each image with probability 0.5; `alternating` (airbench) flips a fixed
    random half of the images in odd epochs and the other half in even epochs, so every image is
    seen both ways in any two consecutive epochs; false never flips.

    All crops of a padded image are one strided view (unfold, no copy); picking one window per image
    is then a single gather of whole 32x32 planes rather than an index per pixel (docs/performance.md).
    """

    def __init__(
        self, padding: int = 4, flip: bool | str = True, padding_mode: str = "zeros", flip_seed: int = 0
    ) -> None:
        check_choice("augmentation.flip", flip, FLIPS)
        check_choice("augmentation.padding_mode", padding_mode, PADDING_MODES)
        self.padding = padding
        self.flip = flip
        self.padding_mode = padding_mode
        self.flip_seed = flip_seed

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        batch, _, height, width = images.shape
        device = images.device
        p = self.padding
        padded = F.pad(images, (p, p, p, p), mode="reflect" if self.padding_mode == "reflect" else "constant")
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (B, C, 2p+1, 2p+1, H, W) view
        dy = torch.randint(0, 2 * p + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (batch,), device=device, generator=generator)
        out = windows[torch.arange(batch, device=device), :, dy, dx]
        if self.flip == "alternating" and index is not None:
            flipped = fixed_coin(index, self.flip_seed) ^ (epoch % 2 == 0)
        elif self.flip:  # also `alternating` called without indices (e.g. by the benchmark)
            flipped = torch.rand(batch, device=device, generator=generator) < 0.5
        else:
            return out
        return torch.where(flipped.view(batch, 1, 1, 1), out.flip(3), out)


class Compose(Augmentation):
    """Several augmentations in order, e.g. flip+crop then cutout."""

    def __init__(self, steps: list) -> None:
        self.steps = steps

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        for step in self.steps:
            images = step(images, generator, index, epoch)
        return images


class ShiftRotate(Augmentation):
    """Random shifts (up to `shift` of the size) and rotations (up to `degrees`) plus horizontal
    flips, like Keras' ImageDataGenerator in 003: one affine warp per image, all images of the batch
    in one `grid_sample`. Pixels shifted in from outside repeat the border (Keras' 'nearest' fill)."""

    def __init__(self, shift: float = 0.1, degrees: float = 15.0, flip: bool = True) -> None:
        self.shift = shift
        self.degrees = degrees
        self.flip = flip

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        batch = images.shape[0]
        device = images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, device=device, generator=generator)

        angle = torch.deg2rad(uniform(-self.degrees, self.degrees))
        # affine_grid works in [-1, 1] coordinates: a shift of s of the size is 2s there
        tx, ty = uniform(-2 * self.shift, 2 * self.shift), uniform(-2 * self.shift, 2 * self.shift)
        sign = torch.ones(batch, device=device)
        if self.flip:
            sign = torch.where(torch.rand(batch, device=device, generator=generator) < 0.5, -sign, sign)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * sign, -sin, tx], 1), torch.stack([sin * sign, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return warped.round_().clamp_(0, 255).to(torch.uint8)


class Cutout(Augmentation):
    """Zero a random `size` x `size` square per image (DeVries & Taylor, 2017); the square may hang
    over the border, so on average less than size^2 pixels are cut."""

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        batch, _, height, width = images.shape
        device = images.device
        top = torch.randint(0, height, (batch, 1, 1), device=device, generator=generator) - self.size // 2
        left = torch.randint(0, width, (batch, 1, 1), device=device, generator=generator) - self.size // 2
        ys = torch.arange(height, device=device).view(1, height, 1)
        xs = torch.arange(width, device=device).view(1, 1, width)
        inside = (ys >= top) & (ys < top + self.size) & (xs >= left) & (xs < left + self.size)
        return images.masked_fill(inside.unsqueeze(1), 0)


class TorchvisionPolicy(Augmentation):
    """torchvision's AutoAugment (CIFAR-10 policy), RandAugment or TrivialAugmentWide, applied image
    by image: a torchvision transform called on a whole batch would draw one operation for all of it.

    The per-image loop costs Python time per image (docs/performance.md); the draws come from torch's global
    generator, which `seed` also fixes.
    """

    def __init__(self, policy: str = "autoaugment", num_ops: int = 2, magnitude: int = 9) -> None:
        from torchvision.transforms import v2

        policies = {
            "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            "randaugment": lambda: v2.RandAugment(num_ops=num_ops, magnitude=magnitude),
            "trivialaugment": lambda: v2.TrivialAugmentWide(),
        }
        check_choice("augmentation.policy", policy, POLICIES)
        self.transform = policies[policy]()

    def __call__(self, images: Tensor, generator: Generator, index: Tensor | None = None, epoch: int = 1) -> Tensor:
        return torch.stack([self.transform(image) for image in images.cpu()]).to(images.device)


class BatchMix:
    """MixUp and/or CutMix on a normalised batch (torchvision.transforms.v2): returns the mixed
    images and soft targets. With both on, each batch picks one of the two at random."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, num_classes: int = 10) -> None:
        from torchvision.transforms import v2

        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = (mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)) if mixers else None

    @property
    def enabled(self) -> bool:
        return self.mix is not None

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(inputs, labels)


def tta_views(images: torch.Tensor, level: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weighted logits sum to the test-time-augmented logits.

    `flip`: the image and its mirror, half each. `flip_translate` (airbench94's TTA): half on those
    two, half on the mirrored pairs of the image shifted one pixel up-left and one down-right
    (reflect padding).
    """
    if level == "none":
        return [(1.0, images)]
    views = [(0.5, images), (0.5, images.flip(3))]
    if level == "flip":
        return views
    check_choice("tta", level, TTA_LEVELS)
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2 : height + 2, 2 : width + 2]]
    return [(w / 2, v) for w, v in views] + [(0.125, v) for s in shifted for v in (s, s.flip(3))]
