"""optimizer=muon: torch.optim.Muon on the weights' 2-D views, another optimizer for the rest."""

from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cifarbench.config import config_dir
from cifarbench.models import build_model
from cifarbench.optimizers import MuonHybrid, build_optimizer, matrix_view

MUON = OmegaConf.load(config_dir() / "optimizer" / "muon.yaml")


def hybrid(weights: list[nn.Parameter], **muon: float) -> MuonHybrid:
    spare = nn.Parameter(torch.zeros(3))  # `other` needs something to optimise
    return MuonHybrid(weights, other=torch.optim.SGD([spare], lr=0.1), **muon)


def test_a_2d_weight_takes_exactly_torchs_muon_step() -> None:
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(16, 32))
    theirs = nn.Parameter(ours.detach().clone())
    settings = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}
    optimizer, reference = hybrid([ours], **settings), torch.optim.Muon([theirs], **settings)
    for _ in range(3):
        grad = torch.randn(16, 32)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_conv_filters_are_orthogonalised_through_their_2d_view(memory_format: torch.memory_format) -> None:
    """One step from rest (momentum 0, no decay): the filters move by Newton-Schulz(gradient) taken
    on the (out, in*kh*kw) matrix - what torch's Muon does to that matrix - in either memory layout."""
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 64, 3, bias=False).to(memory_format=memory_format)
    grad = torch.randn_like(conv.weight)
    flat = nn.Parameter(conv.weight.detach().reshape(64, -1).clone())
    before = conv.weight.detach().clone()
    conv.weight.grad = grad.clone().contiguous(memory_format=memory_format)
    flat.grad = grad.reshape(64, -1).clone()
    hybrid([conv.weight], lr=1.0, momentum=0.0, nesterov=False).step()
    torch.optim.Muon([flat], lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0).step()
    step = (before - conv.weight.detach()).reshape(64, -1)
    expected = before.reshape(64, -1) - flat.detach()
    assert torch.allclose(step, expected, atol=0.02 * expected.abs().max().item())
    singular_values = torch.linalg.svdvals(step.double())  # orthogonalised: all near 1 (NS's 0.5-1.5 band)
    assert singular_values.min() > 0.3 and singular_values.max() < 1.6
    assert conv.weight.is_contiguous(memory_format=memory_format)  # updated in place, layout kept


def test_the_2d_view_shares_the_weights_memory() -> None:
    for memory_format in (torch.contiguous_format, torch.channels_last):
        weight = torch.randn(8, 4, 3, 3).contiguous(memory_format=memory_format)
        view = matrix_view(weight)
        view.add_(1.0)
        assert torch.equal(view, matrix_view(weight))
        assert view.data_ptr() == weight.data_ptr() and view.shape == (8, 36)


@pytest.mark.parametrize("name", ["fast", "resnet18", "improved", "kerascnn"])
def test_every_trainable_parameter_has_exactly_one_optimizer(name: str) -> None:
    model_cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    if "weights" in model_cfg:
        model_cfg.weights = "none"
    model = build_model(model_cfg).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(MUON, model)
    muon = [id(p) for p in optimizer.matrices]
    other = [id(p) for group in optimizer.other.param_groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(muon + other) == sorted(trainable)  # each once: no parameter twice, none left out
    assert all(p.ndim >= 2 for p in optimizer.matrices)
    output_layer = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2][-1]
    assert id(output_layer) in other  # the classifier stays with the plain optimizer
    frozen = [id(p) for p in model.parameters() if not p.requires_grad]
    assert not set(frozen) & set(muon + other)
    groups = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(groups) == sorted(trainable)  # what schedulers, the grad scaler and zero_grad see


def test_the_state_round_trips_through_a_weights_only_checkpoint() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    copy = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    copy.load_state_dict(model.state_dict())
    first, second = build_optimizer(MUON, model), build_optimizer(MUON, copy)
    inputs = torch.randn(4, 3, 32, 32)

    def step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        net(inputs).square().mean().backward()
        optimizer.step()

    step(model, first)
    step(copy, second)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.param_groups[0]["lr"] = first.param_groups[0]["lr"] = 0.01  # a scheduler's change reaches Muon
    for _ in range(2):
        step(model, first)
        step(copy, second)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values(), strict=True))
