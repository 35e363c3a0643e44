"""Every model config builds, runs forward and backward, and has the parameters its report gives."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf

from cifarbench.config import config_dir, group_options
from cifarbench.errors import UserError
from cifarbench.models import build_model, count_parameters
from cifarbench.models.catalog import count
from cifarbench.models.kerascnn import KerasCNN
from cifarbench.models.torchvision_zoo import torchvision_model
from cifarbench.optimizers import build_optimizer
from conftest import SMOKE, cli

MODELS = group_options("model")


def model_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), overrides)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_at_its_input_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_cfg(name)).train()
    images = torch.randn(2, 3, 32, 32)  # resizing to input_size happens inside the model
    loss = F.cross_entropy(out := model(images), torch.tensor([3, 7]))
    loss.backward()
    assert out.shape == (2, 10)
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_zoo_has_every_model_of_the_reports() -> None:
    expected = {"baseline", "student", "improved", "fc2", "cnn3", "kerascnn", "mfm24", "resnet18", "resnet50",
                "vgg16", "efficientnet_b0", "densenet121", "densenet161", "inception_v3"}  # fmt: skip
    assert expected <= set(MODELS)


@pytest.mark.parametrize(("name", "target", "tolerance"), [("student", 19.0e6, 0.005), ("improved", 5.39e6, 0.05)])
def test_from_scratch_counts_match_report_000(name: str, target: float, tolerance: float) -> None:
    total, trainable = count(name)
    assert total == trainable
    assert abs(total - target) / target <= tolerance, total


@pytest.mark.parametrize(("arch", "target"), [("resnet50", 48.8e6), ("efficientnet_b0", 26.1e6), ("vgg16", 33.6e6)])
def test_student_top_counts_match_table_1(arch: str, target: float) -> None:
    total, _ = count(arch, head="student_top")
    assert abs(total - target) / target <= 0.02, total


def test_models_command_lists_every_model(tmp_path: Path) -> None:
    out = cli("models", cwd=tmp_path).stdout
    for name in MODELS:
        assert re.search(rf"^{name}\s", out, re.M), name
    assert re.search(r"^student\s+-\s+19\.02M\s+19\.02M .*19\.0M \(000 Table 1\)", out, re.M)
    assert re.search(r"^resnet50\s+student_top\s+48\.72M", out, re.M)


# --- freezing ---------------------------------------------------------------------------------


def trainable(model: torch.nn.Module) -> int:
    return count_parameters(model)[1]


def test_freeze_backbone_trains_only_the_new_head() -> None:
    model = torchvision_model("resnet18", freeze="backbone")
    assert trainable(model) == 512 * 10 + 10
    model = torchvision_model("resnet18", head="append", freeze="backbone")
    assert trainable(model) == 1000 * 10 + 10  # the kept 1000-way ImageNet layer stays frozen


def test_freeze_last_n_vgg16_is_keras_last_four_layers() -> None:
    """003: vgg16_base.layers[-4:] = block5's three convs and its pool, plus the head."""
    model = torchvision_model("vgg16", freeze="last_n", unfreeze_last=4, head="student_top")
    head = 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert trainable(model) == 3 * (512 * 512 * 9 + 512) + head


def test_freeze_last_n_resnet_unfreezes_layer4() -> None:
    model = torchvision_model("resnet18", freeze="last_n", unfreeze_last=1)
    layer4 = sum(p.numel() for p in model.net.layer4.parameters())
    assert trainable(model) == layer4 + 512 * 10 + 10
    with pytest.raises(UserError, match=r"model.unfreeze_last=99 is out of range for resnet18: .*1\.\.\d+"):
        torchvision_model("resnet18", freeze="last_n", unfreeze_last=99)


def test_frozen_weights_do_not_move_and_frozen_bn_stays_in_eval() -> None:
    torch.manual_seed(0)
    model = torchvision_model("resnet18", freeze="last_n", unfreeze_last=1).train()
    optimizer = build_optimizer(OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}), model)
    handed = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert handed == {id(p) for p in model.parameters() if p.requires_grad}
    assert not model.net.bn1.training and not model.net.layer1[0].bn1.training
    assert model.net.layer4[0].bn1.training
    frozen_before = model.net.layer1[0].conv1.weight.clone()
    stats_before = model.net.bn1.running_mean.clone()
    trained_before = model.net.layer4[0].conv1.weight.clone()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert torch.equal(model.net.layer1[0].conv1.weight, frozen_before)
    assert torch.equal(model.net.bn1.running_mean, stats_before)
    assert not torch.equal(model.net.layer4[0].conv1.weight, trained_before)


def test_cifar_stem_keeps_resolution() -> None:
    model = torchvision_model("resnet18", cifar_stem=True)
    assert model.net.conv1.kernel_size == (3, 3) and model.net.conv1.stride == (1, 1)
    assert isinstance(model.net.maxpool, torch.nn.Identity)
    with pytest.raises(UserError, match="cifar_stem=true is for ResNets and DenseNets"):
        torchvision_model("vgg16", cifar_stem=True)


# --- weights ----------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The network fails as it does offline; the returned list records every attempt."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(str(args[:1]))
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


@pytest.fixture
def hub_dir(tmp_path: Path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def published_name(arch: str) -> str:
    return torchvision.models.get_model_weights(arch).DEFAULT.url.rsplit("/", 1)[-1]


def legacy_densenet_keys(state: dict) -> dict:
    """Published DenseNet checkpoints say 'denselayer1.norm.1.weight' where torchvision says 'norm1',
    and predate batch norm's num_batches_tracked."""
    return {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


def test_weights_from_a_local_state_dict(tmp_path: Path, offline: list[str]) -> None:
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = torchvision_model("resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.net.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert model.net.fc.out_features == 10
    assert not offline, offline


def test_imagenet_weights_come_from_the_hub_cache_offline(hub_dir: Path, offline: list[str]) -> None:
    reference = torchvision.models.resnet18()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / published_name("resnet18"))
    model = torchvision_model("resnet18", weights="imagenet", head="append")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.net.fc[0].weight, reference.fc.weight)  # head=append keeps the ImageNet classifier
    assert not offline, offline


def test_densenet_legacy_keys_load_by_path_and_from_hub(tmp_path: Path, hub_dir: Path, offline: list[str]) -> None:
    reference = torchvision.models.densenet121()
    legacy = legacy_densenet_keys(reference.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "dn121.pth")
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(legacy, hub_dir / "checkpoints" / published_name("densenet121"))
    for weights in (str(tmp_path / "dn121.pth"), "imagenet"):
        model = torchvision_model("densenet121", weights=weights)
        got = model.net.features.denseblock1.denselayer1.norm1.weight
        assert torch.equal(got, reference.features.denseblock1.denselayer1.norm1.weight)
    assert not offline, offline


def test_inception_weights_with_aux_logits_load(tmp_path: Path, offline: list[str]) -> None:
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(reference.state_dict(), tmp_path / "inc.pth")
    model = torchvision_model("inception_v3", weights=str(tmp_path / "inc.pth"), input_size=75)
    assert torch.equal(model.net.Mixed_7c.branch1x1.conv.weight, reference.Mixed_7c.branch1x1.conv.weight)
    assert model.net.AuxLogits is None
    assert not offline, offline


def test_load_failures_name_the_file_and_the_expected_name(tmp_path: Path, hub_dir: Path, offline: list[str]) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match=rf"{missing}: file not found.*resnet18-f37072fd\.pth"):
        torchvision_model("resnet18", weights=str(missing))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(UserError, match=r"r50\.pth: does not fit resnet18: .*size mismatch.*resnet18-f37072fd\.pth"):
        torchvision_model("resnet18", weights=str(tmp_path / "r50.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"junk\.pth: not a readable state dict"):
        torchvision_model("resnet18", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match=rf"put torchvision's file at {hub_dir}/checkpoints/resnet18-f37072fd\.pth"):
        torchvision_model("resnet18", weights="imagenet")
    assert offline  # it did try to download, and said what to do when that failed


# --- real (tiny) trainings through the CLI --------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [["model=improved"], ["model=resnet18", "model.head=student_top", "model.freeze=backbone"]],
    ids=["improved", "resnet18-student_top-frozen"],
)
def test_tiny_real_training(tmp_path: Path, run_env: dict, overrides: list[str]) -> None:
    cli("train", *SMOKE, "epochs=1", "name=zoo", *overrides, cwd=tmp_path, env=run_env)
    (metrics_file,) = (tmp_path / "outputs" / "zoo").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed"
    if "model.freeze=backbone" in overrides:
        assert metrics["params"]["trainable"] == 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
        assert metrics["params"]["total"] > 11e6 + metrics["params"]["trainable"]


@pytest.mark.parametrize("name", ["student", "improved", "mfm24", "kerascnn"])  # 000, 000, 003, 004: Keras-built
def test_keras_init_gives_keras_kernels_biases_and_batch_norm(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_cfg(name, init="keras"))
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers and norms
    for layer in layers:
        # glorot-uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)), fans counting the receptive field
        fan_out, fan_in = layer.weight.shape[0], layer.weight.shape[1]
        field = layer.weight[0, 0].numel()
        limit = (6 / ((fan_in + fan_out) * field)) ** 0.5
        assert layer.weight.abs().max() <= limit
        if layer.weight.numel() >= 10_000:  # enough draws for the spread of a uniform to show
            assert layer.weight.std().item() == pytest.approx(limit / 3**0.5, rel=0.05)
        assert layer.bias is None or not layer.bias.any()
    assert all(norm.momentum == 0.01 and norm.eps == 1e-3 for norm in norms)  # Keras: momentum 0.99, epsilon 1e-3
    torch_default = build_model(model_cfg(name))
    default_norms = [m for m in torch_default.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(norm.momentum == 0.1 and norm.eps == 1e-5 for norm in default_norms)
    assert any(m.bias is not None and m.bias.any() for m in torch_default.modules() if isinstance(m, torch.nn.Conv2d))


def test_kerascnn_readings_of_report_004() -> None:
    """dropout_scope and convs_per_block: the two readings of 004's text, as options of one model."""

    def rates(model: torch.nn.Module) -> list[float]:
        return [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]

    def convs(model: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    rising = build_model(model_cfg("kerascnn", dropout=0.3, dropout_scope="rising", convs_per_block=1))
    assert rates(rising) == [0.3, 0.4, 0.5, 0.5] and convs(rising) == 3
    assert count_parameters(rising)[0] == 357_258
    assert rates(build_model(model_cfg("kerascnn", dropout=0.4, dropout_scope="uniform"))) == [0.4] * 4
    two = build_model(model_cfg("kerascnn", convs_per_block=2))
    assert convs(two) == 6 and count_parameters(two)[0] == 551_466
    assert two(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # model=kerascnn is the reading validation favoured (docs/experiments.md); the class's own
    # defaults stay the first reading, which the runs saved before the options existed trained
    default = build_model(model_cfg("kerascnn"))
    assert rates(default) == [0.3] * 4 and convs(default) == 6
    first = KerasCNN()
    assert rates(first) == [0.3, 0.4, 0.5, 0.5] and convs(first) == 3


@pytest.mark.parametrize(
    ("override", "allowed"),
    [("model.init=glorot", "torch, keras"), ("model.dropout_scope=all", "rising, uniform"),
     ("model.convs_per_block=0", "an integer in [1, 4]")],
)  # fmt: skip
def test_a_reading_outside_its_options_is_refused_in_one_line(tmp_path: Path, override: str, allowed: str) -> None:
    result = cli("train", "model=kerascnn", override, cwd=tmp_path, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and allowed in lines[0], result.stderr
