"""torchvision's ImageNet architectures adapted to CIFAR-10: weights, head, freezing, input size.

model.weights   none | imagenet | PATH      (state dict; torchvision's file name in the hub cache
                                             is used offline when it is there)
model.head      replace | append | student_top
model.freeze    none | backbone | last_n    (with model.unfreeze_last=N)
model.input_size, model.cifar_stem
"""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cifarbench.errors import UserError, check_choice
from cifarbench.models.student import StudentTop

ARCHS = ("resnet18", "resnet50", "vgg16", "efficientnet_b0", "densenet121", "densenet161", "inception_v3")
HEADS = ("replace", "append", "student_top")
FREEZES = ("none", "backbone", "last_n")


def family(arch: str) -> str:
    return re.match(r"[a-z]+", arch).group(0)  # resnet50 -> resnet, efficientnet_b0 -> efficientnet


class TransferModel(nn.Module):
    """A torchvision network with a CIFAR-10 head, resizing its 32x32 input on the fly when it
    wants more, and keeping frozen batch-norm layers in eval mode (their running statistics are
    part of the frozen features)."""

    def __init__(self, net: nn.Module, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        return self


def torchvision_model(
    arch: str,
    weights: str = "none",
    head: str = "replace",
    freeze: str = "none",
    unfreeze_last: int = 0,
    input_size: int = 32,
    cifar_stem: bool = False,
    dropout: float = 0.3,
    num_classes: int = 10,
) -> TransferModel:
    for key, value, allowed in (("arch", arch, ARCHS), ("head", head, HEADS), ("freeze", freeze, FREEZES)):
        check_choice(f"model.{key}", value, allowed)
    if arch == "inception_v3" and input_size < 75:
        raise UserError(f"model.input_size={input_size} is too small for inception_v3: it needs at least 75")
    net = _load_backbone(arch, str(weights))
    if cifar_stem:
        _cifar_stem(net, arch)
    new_head = _set_head(net, arch, head, dropout, num_classes)
    _freeze(net, arch, freeze, unfreeze_last, new_head)
    return TransferModel(net, input_size)


def _build(arch: str, weights: torchvision.models.WeightsEnum | None) -> nn.Module:
    kwargs = {}
    if arch == "inception_v3":
        # torchvision's published inception weights include the auxiliary classifier; it is
        # dropped after loading (training uses the main output only).
        kwargs = {"aux_logits": True, "init_weights": weights is None}
    return torchvision.models.get_model(arch, weights=weights, **kwargs)


def _load_backbone(arch: str, weights: str) -> nn.Module:
    if weights == "none":
        net = _build(arch, None)
    elif weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        expected = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
        try:
            net = _build(arch, enum)  # uses `expected` when present, else downloads it there
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise UserError(
                f"model.weights=imagenet: ImageNet weights for {arch} could not be loaded or downloaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); offline, put torchvision's file at "
                f"{expected} (expected name {expected.name}), or pass model.weights=PATH or model.weights=none"
            ) from None
    else:
        net = _build(arch, None)
        _load_state_dict_file(net, arch, Path(weights).expanduser())
    if arch == "inception_v3":
        net.aux_logits = False
        net.AuxLogits = None
    if family(arch) == "vgg":
        net.avgpool = DeterministicAdaptiveAvgPool2d(net.avgpool.output_size)
    return net


class DeterministicAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d whose backward is deterministic on CUDA where the sizes allow (torch has
    no deterministic CUDA kernel for it, so `deterministic=true` fails at the first step): a map that
    divides into the output is average-pooled by whole windows, one that the output is a multiple of
    is repeated (VGG's 1x1 map at 32x32 input -> its 7x7 pool). Same values as the adaptive pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * 2
        out_h, out_w = (h if s is None else s for s in size)
        if h % out_h == 0 and w % out_w == 0:
            return F.avg_pool2d(x, (h // out_h, w // out_w))
        if out_h % h == 0 and out_w % w == 0:
            repeated = x[:, :, :, None, :, None].expand(n, c, h, out_h // h, w, out_w // w)
            return repeated.reshape(n, c, out_h, out_w)
        return F.adaptive_avg_pool2d(x, (out_h, out_w))  # uneven windows: only torch's kernel does them


def _load_state_dict_file(net: nn.Module, arch: str, path: Path) -> None:
    expected = torchvision.models.get_model_weights(arch).DEFAULT.url.rsplit("/", 1)[-1]
    hint = f"expected a state dict of torchvision's {arch} (as in its published file {expected})"
    if not path.is_file():
        raise UserError(f"model.weights={path}: file not found; {hint}, or use model.weights=imagenet|none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"model.weights={path}: not a readable state dict ({type(exc).__name__}); {hint}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # a training checkpoint that wraps the weights
    if not isinstance(state, dict):
        raise UserError(f"model.weights={path}: holds a {type(state).__name__}, not a state dict; {hint}")
    if family(arch) == "densenet":
        state = _modern_densenet_keys(state)
    if arch == "inception_v3" and not any(k.startswith("AuxLogits.") for k in state):
        net.aux_logits, net.AuxLogits = False, None
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise UserError(f"model.weights={path}: does not fit {arch}: {mismatch}; {hint}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"model.weights={path}: does not fit {arch}: missing {result.missing_keys[:3]}"
            f"{'...' if len(result.missing_keys) > 3 else ''}, unexpected {result.unexpected_keys[:3]}"
            f"{'...' if len(result.unexpected_keys) > 3 else ''}; {hint}"
        )


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _modern_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published DenseNet checkpoints name layers 'norm.1'; torchvision's modules are 'norm1'."""
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _cifar_stem(net: nn.Module, arch: str) -> None:
    """The usual adaptation to 32x32 inputs: a 3x3 stride-1 first conv and no early max-pool, so the
    network does not throw away 15/16 of the pixels before its first block. The new stem is trained
    from scratch (its ImageNet weights have another shape)."""
    kind = family(arch)
    if kind == "resnet":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif kind == "densenet":
        net.features.conv0 = nn.Conv2d(3, net.features.conv0.out_channels, 3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
    else:
        raise UserError(f"model.cifar_stem=true is for ResNets and DenseNets, not {arch}")


def _classifier_linear(net: nn.Module, arch: str) -> tuple[nn.Module, str]:
    """(parent, attribute) of the final 1000-way Linear layer."""
    kind = family(arch)
    if kind in ("resnet", "inception"):
        return net, "fc"
    if kind == "densenet":
        return net, "classifier"
    return net.classifier, str(len(net.classifier) - 1)  # vgg, efficientnet: Sequential(..., Linear)


def _head_attribute(arch: str) -> str:
    return "fc" if family(arch) in ("resnet", "inception") else "classifier"


def _set_head(net: nn.Module, arch: str, head: str, dropout: float, num_classes: int) -> nn.Module:
    """Puts the CIFAR-10 head in place and returns the new (untrained) part of it."""
    parent, name = _classifier_linear(net, arch)
    linear: nn.Linear = getattr(parent, name)
    if head == "replace":
        new = nn.Linear(linear.in_features, num_classes)
        setattr(parent, name, new)
    elif head == "append":  # 001: keep the 1000-way ImageNet classifier, map its scores to 10 classes
        new = nn.Linear(linear.out_features, num_classes)
        setattr(parent, name, nn.Sequential(linear, new))
    else:
        in_features = linear.in_features
        if family(arch) == "vgg":
            # VGG's own top flattens a 7x7 map into 25088 features; the student top pools to 512.
            net.avgpool = nn.AdaptiveAvgPool2d(1)
            in_features = net.features[-3].out_channels
        # At 32x32 the backbones end in a 1x1 map, so their pooled features are exactly what 000's
        # Keras Flatten saw; pooling keeps the top's size fixed at larger inputs.
        new = StudentTop(in_features, dropout, num_classes=num_classes)
        setattr(net, _head_attribute(arch), new)
    return new


def backbone_units(net: nn.Module, arch: str) -> list[nn.Module]:
    """The backbone's layers or blocks in order, for `freeze=last_n`: VGG's conv and pool layers
    (Keras' layers[-4:] of 003 is three convs and a pool); DenseNet's and EfficientNet's feature
    stages; ResNet's and Inception's top-level modules (stem parts, then layer1..4 / Mixed_*)."""
    kind = family(arch)
    if kind == "vgg":
        return [m for m in net.features if isinstance(m, nn.Conv2d | nn.MaxPool2d)]
    if kind in ("densenet", "efficientnet"):
        return list(net.features.children())
    head = _head_attribute(arch)
    return [m for name, m in net.named_children() if name not in (head, "avgpool", "dropout", "AuxLogits")]


def _freeze(net: nn.Module, arch: str, freeze: str, unfreeze_last: int, new_head: nn.Module) -> None:
    """Only the new head trains (plus, for last_n, the last layers or blocks); pretrained parts of
    the classifier (VGG's fc6/fc7, the 1000-way layer kept by head=append) count as backbone."""
    if freeze == "none":
        return
    units = backbone_units(net, arch)
    if freeze == "last_n" and not 1 <= unfreeze_last <= len(units):
        raise UserError(
            f"model.unfreeze_last={unfreeze_last} is out of range for {arch}: freeze=last_n needs 1..{len(units)}"
        )
    net.requires_grad_(False)
    new_head.requires_grad_(True)
    if freeze == "last_n":
        for unit in units[-unfreeze_last:]:
            unit.requires_grad_(True)
