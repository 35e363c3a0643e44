"""Optimizers, schedules, augmentation, early stopping, label smoothing and EMA (unit level)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifarbench.augmentation import Augmentation, BatchMix, NoAugmentation
from cifarbench.config import config_dir, group_options
from cifarbench.data import Batches, Normalize, Split
from cifarbench.optimizers import build_optimizer
from cifarbench.runtime import select_precision
from cifarbench.schedulers import build_schedule, epoch_lengths, training_steps
from cifarbench.stopping import BestTracker
from cifarbench.train import TrainingStep, train_one_epoch


def group_cfg(group: str, name: str, **overrides):
    """One group option as the CLI composes it: interpolations (e.g. `${seed}`) resolve against the
    default root config."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={name}"])
    return OmegaConf.merge(OmegaConf.to_container(cfg[group], resolve=True), overrides)


def tiny_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


# --- optimizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax", "sgd", "rmsprop"])
def test_every_optimizer_builds_from_yaml(name: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(group_cfg("optimizer", name, weight_decay=0.1), model)
    assert type(optimizer).__name__.lower() == name.replace("sgd", "sgd")
    assert all(group["weight_decay"] in (0.1, 0.0) for group in optimizer.param_groups)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "muon"])
def test_fusable_optimizers_step_fused_and_agree_with_the_per_tensor_loop(name: str) -> None:
    """The per-tensor loop (torch's CPU default) trains the student model 1.43x slower at batch 32."""

    def trained(per_tensor_loop: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        # No conv bias before the batch norm (as in the models): its true gradient is zero, so Adam's
        # step on it is rounding noise divided by rounding noise, which no two kernels agree on
        # (seen on an AMD EPYC: 2.5% apart after 3 steps while every other parameter agreed to 1e-8).
        conv = nn.Conv2d(3, 4, 3, bias=False)
        model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 2))
        cfg = group_cfg("optimizer", name, weight_decay=0.1)
        if per_tensor_loop:
            (cfg.other if name == "muon" else cfg).fused = False
        optimizer = build_optimizer(cfg, model)
        for _ in range(3):
            model(torch.randn(5, 3, 6, 6)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        return model, optimizer

    default_model, default_optimizer = trained(per_tensor_loop=False)
    loop_model, _ = trained(per_tensor_loop=True)
    plain = default_optimizer.other if name == "muon" else default_optimizer
    assert plain.defaults["fused"] is True  # the YAML's default
    for default_p, loop_p in zip(default_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(default_p, loop_p, rtol=1e-5, atol=1e-6)


def test_no_decay_on_norm_and_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(group_cfg("optimizer", "sgd", weight_decay=0.1, decay_norm_and_bias=False), model)
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [model[0].weight.shape] and decayed["weight_decay"] == 0.1
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0  # conv bias, BN weight and bias
    nesterov = build_optimizer(group_cfg("optimizer", "sgd", nesterov=True), model)
    assert nesterov.param_groups[0]["nesterov"] is True


def test_norm_lr_scale_keeps_lr_times_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = group_cfg("optimizer", "sgd", lr=0.5, weight_decay=0.01, norm_lr_scale=64.0)
    others, norms = build_optimizer(cfg, model).param_groups
    assert [p.shape for p in others["params"]] == [(4, 3, 3, 3), (4,)]  # conv weight and bias
    assert norms["params"] == [model[1].weight, model[1].bias]
    assert norms["lr"] == 32.0 and others["lr"] == 0.5
    assert norms["lr"] * norms["weight_decay"] == pytest.approx(others["lr"] * others["weight_decay"])


# --- schedules --------------------------------------------------------------------------------


def lrs_per_epoch(name: str, epochs: int, steps: int, val_losses=None, **overrides) -> list[float]:
    optimizer = tiny_optimizer(lr=1.0)
    schedule = build_schedule(group_cfg("scheduler", name, **overrides), optimizer, epochs, steps)
    seen = []
    for epoch in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps):
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(val_losses[epoch] if val_losses else 1.0)
    return seen


def test_step_drops_by_gamma_at_step_size() -> None:
    assert lrs_per_epoch("step", 12, 3, step_size=5, gamma=0.1) == pytest.approx([1.0] * 5 + [0.1] * 5 + [0.01] * 2)


def test_plateau_halves_after_patience_epochs_without_improvement() -> None:
    losses = [1.0, 0.9] + [0.95] * 8  # best at epoch 2, then no improvement
    lrs = lrs_per_epoch("plateau", 10, 2, val_losses=losses, factor=0.5, patience=5)
    # epochs 3..7 are the 5 bad epochs allowed; the 6th (epoch 8) halves the lr for epoch 9
    assert lrs == pytest.approx([1.0] * 8 + [0.5, 0.5])


def test_cosine_spans_the_run() -> None:
    lrs = lrs_per_epoch("cosine", 10, 1)
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5) and lrs[-1] < 0.03


def test_warmup_cosine_shape() -> None:
    optimizer = tiny_optimizer(lr=1.0)
    schedule = build_schedule(group_cfg("scheduler", "warmup_cosine", warmup_fraction=0.2), optimizer, 5, 10)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_batch()
    warmup, decay = lrs[:10], lrs[10:]
    assert warmup[0] == pytest.approx(0.01) and all(b > a for a, b in itertools.pairwise(warmup))
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 10
    assert all(b < a for a, b in itertools.pairwise(decay)) and decay[-1] < 0.01


def test_warmup_linear_is_a_triangle_that_keeps_group_ratios() -> None:
    weights, shifts = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weights]}, {"params": [shifts], "lr": 64.0}], lr=1.0)
    schedule = build_schedule(group_cfg("scheduler", "warmup_linear"), optimizer, 10, 10)  # 20 warm-up steps
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        assert optimizer.param_groups[1]["lr"] == pytest.approx(64 * lrs[-1])
        optimizer.step()
        schedule.after_batch()
    assert lrs[0] == pytest.approx(0.2) and lrs[10] == pytest.approx(0.6) and lrs[20] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(1.0 - 0.93 * 40 / 80)  # straight line from 1 at step 20 ...
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.07)  # ... to 0.07 after the last step


def test_onecycle_total_steps_is_epochs_times_batches() -> None:
    optimizer = tiny_optimizer()
    schedule = build_schedule(group_cfg("scheduler", "onecycle"), optimizer, epochs=3, steps_per_epoch=7)
    assert schedule.scheduler.total_steps == 21 and schedule.interval == "step"
    for _ in range(20):  # torch raises if stepped past total_steps
        optimizer.step()
        schedule.after_batch()
    assert optimizer.param_groups[0]["lr"] < 0.1 / 25


@pytest.mark.parametrize(("epochs", "batches", "steps"), [(3, 7, 21), (2.5, 8, 20), (2.2, 10, 22), (9.9, 49, 486)])
def test_a_fractional_run_counts_whole_batches(epochs: float, batches: int, steps: int) -> None:
    """The part epoch rounds up to a whole batch (9.9 x 49 = 485.1 -> 486), and a float product
    a hair above a whole number (2.2 x 10 = 22.000000000000004) does not add a step."""
    assert training_steps(epochs, batches) == steps
    schedule = build_schedule(group_cfg("scheduler", "onecycle"), tiny_optimizer(), epochs, batches)
    assert schedule.scheduler.total_steps == steps
    per_epoch = build_schedule(group_cfg("scheduler", "cosine"), tiny_optimizer(), epochs, batches)
    assert per_epoch.scheduler.T_max == math.ceil(epochs)  # the part epoch steps a per-epoch schedule too
    assert len(epoch_lengths(epochs, batches)) == math.ceil(epochs)
    assert sum(epoch_lengths(epochs, batches)) == steps


def test_a_length_a_hair_above_whole_epochs_adds_no_empty_epoch() -> None:
    assert training_steps(2.0000000001, 8) == 16 and len(epoch_lengths(2.0000000001, 8)) == 2


# --- augmentation ------------------------------------------------------------------------------

AUGMENTATIONS = group_options("augmentation")


@pytest.fixture
def same_image_batch() -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    return image.expand(64, 3, 32, 32).contiguous()


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentation_keeps_shape_and_dtype(name: str, same_image_batch: torch.Tensor) -> None:
    out = instantiate(group_cfg("augmentation", name))(same_image_batch, torch.Generator().manual_seed(0))
    assert out.shape == same_image_batch.shape and out.dtype == torch.uint8


@pytest.mark.parametrize("name", [a for a in AUGMENTATIONS if a != "none"])
def test_randomness_is_drawn_per_image(name: str, same_image_batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = instantiate(group_cfg("augmentation", name))(same_image_batch, torch.Generator().manual_seed(0))
    distinct = {bytes(img.numpy()) for img in out}
    assert len(distinct) > 16, f"{name}: only {len(distinct)} distinct results for 64 copies of one image"


def test_none_is_the_identity(same_image_batch: torch.Tensor) -> None:
    out = instantiate(group_cfg("augmentation", "none"))(same_image_batch, torch.Generator())
    assert torch.equal(out, same_image_batch)


def test_flip_probability_is_one_half() -> None:
    images = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(4000, 3, 32, 32).contiguous()
    out = instantiate(group_cfg("augmentation", "flipcrop", padding=0))(images, torch.Generator().manual_seed(1))
    flipped = (out[:, 0, 0, 0] == 31).float().mean().item()
    assert abs(flipped - 0.5) < 0.03
    assert torch.equal(out[0, 0, 0], images[0, 0, 0]) or torch.equal(out[0, 0, 0], images[0, 0, 0].flip(0))


def test_crop_offsets_cover_the_padding() -> None:
    images = torch.full((2000, 1, 32, 32), 255, dtype=torch.uint8)
    out = instantiate(group_cfg("augmentation", "flipcrop", flip=False))(images, torch.Generator().manual_seed(2))
    zero_rows = (out[:, 0, :, 16] == 0).sum(1)  # zero padding shows as black rows: 0..4 of them
    assert set(zero_rows.tolist()) == {0, 1, 2, 3, 4}


def test_batch_mix_gives_soft_targets() -> None:
    torch.manual_seed(0)
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    mixed, targets = BatchMix(mixup_alpha=1.0)(inputs, labels)
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, inputs)
    assert not BatchMix().enabled


# --- early stopping ----------------------------------------------------------------------------


def test_early_stopping_on_a_scripted_curve() -> None:
    tracker = BestTracker("val_loss", min_delta=0.01, patience=3)
    curve = [1.0, 0.8, 0.7, 0.695, 0.71, 0.692, 0.75, 0.5]  # best 0.7 at epoch 3; 0.695, 0.692: gain < 0.01
    stopped = None
    for epoch, value in enumerate(curve, start=1):
        tracker.update(epoch, value)
        if tracker.should_stop:
            stopped = epoch
            break
    assert stopped == 6 and tracker.best_epoch == 3 and tracker.best == 0.7
    accuracy = BestTracker("val_acc")
    assert accuracy.update(1, 50.0) and accuracy.update(2, 60.0) and not accuracy.update(3, 55.0)
    assert not accuracy.should_stop  # no patience: never stops


# --- label smoothing and EMA -------------------------------------------------------------------


def make_step(
    model: nn.Module, lr: float, label_smoothing: float = 0.0, ema_decay: float | None = None
) -> TrainingStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return TrainingStep(
        forward=model,
        optimizer=optimizer,
        schedule=build_schedule(group_cfg("scheduler", "none"), optimizer, 1, 1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision=select_precision("fp32", torch.device("cpu")),
        batch_mix=BatchMix(),
        label_smoothing=label_smoothing,
        grad_clip=None,
        ema=AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay else None,
    )


def batches_of(
    split: Split, batch_size: int, augmentation: Augmentation | None = None, shuffle: torch.Generator | None = None
) -> Batches:
    """The loop's loader over a tiny split: no augmentation, [0, 1] inputs."""
    normalize = Normalize("unit", torch.device("cpu"), channels_last=False)
    return Batches(
        split, batch_size, augmentation or NoAugmentation(), normalize, shuffle or torch.Generator(), torch.Generator()
    )


@pytest.fixture
def tiny_split() -> Split:
    torch.manual_seed(0)
    return Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40) % 10)


def test_label_smoothing_reaches_the_loss(tiny_split: Split) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        model[1].weight.mul_(30)  # confident predictions, where smoothing matters
    expected = {}
    logits = model(tiny_split.images.float() / 255)
    for eps in (0.0, 0.2):
        expected[eps] = F.cross_entropy(logits, tiny_split.labels, label_smoothing=eps).item()
        loss, _ = train_one_epoch(make_step(model, lr=0.0, label_smoothing=eps), batches_of(tiny_split, 40))
        assert loss == pytest.approx(expected[eps], rel=1e-5)
    assert abs(expected[0.2] - expected[0.0]) > 0.01  # so the equality above could tell them apart


def test_ema_averages_the_weights(tiny_split: Split) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    decay = 0.9
    step = make_step(model, lr=0.5, ema_decay=decay)
    snapshots = []
    for _ in range(3):  # one batch per epoch: the EMA updates once after each step
        train_one_epoch(step, batches_of(tiny_split, 40))
        snapshots.append(model[1].weight.detach().clone())
    p1, p2, p3 = snapshots
    expected = decay * (decay * p1 + (1 - decay) * p2) + (1 - decay) * p3
    assert torch.allclose(step.ema.module[1].weight, expected, atol=1e-6)
    assert not torch.allclose(step.ema.module[1].weight, p3)
    assert math.isfinite(step.ema.module[1].weight.sum().item())
