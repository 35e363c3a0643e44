"""The airbench94-style parts behind `experiment=fast`: whitening init, alternating flip with
mirrored translation, test-time augmentation and lookahead, each an option of the general loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from cifarbench import train as train_module
from cifarbench.augmentation import FlipCrop, tta_views
from cifarbench.checkpoint import load_checkpoint
from cifarbench.config import config_dir
from cifarbench.errors import Interrupted
from cifarbench.models.fast import FastNet
from cifarbench.optimizers import Lookahead


def test_fast_net_is_airbench_sized_with_frozen_whitening_and_bn_scales() -> None:
    model = FastNet()
    total = sum(p.numel() for p in model.parameters())
    # whitening 3*2*2*24 + 24, convs 24*64*9 + 64*64*9 + 64*256*9 + 3*256*256*9, linear 256*10, BN 2*(64+256+256)
    assert total == 312 + 13824 + 36864 + 147456 + 3 * 589824 + 2560 + 2 * 1152
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    frozen_scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(frozen_scales) == 6 and not any(w.requires_grad for w in frozen_scales)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_whitening_decorrelates_the_patches() -> None:
    torch.manual_seed(0)
    base = torch.randn(200, 1, 32, 32)
    images = torch.cat([base, 0.9 * base + 0.1 * torch.randn_like(base), torch.randn_like(base)], 1)  # correlated
    model = FastNet(whitening_eps=1e-6)
    model.init_from_data(images)
    out = nn.functional.conv2d(images, model.whiten.weight[:12])  # the 12 directions, without the bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_alternating_flip_shows_each_image_both_ways_in_consecutive_epochs() -> None:
    ramp = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(4000, 3, 32, 32).contiguous()
    index = torch.arange(4000)
    augment = FlipCrop(padding=0, flip="alternating", flip_seed=3)

    def flipped(epoch: int, seed: int = 0) -> torch.Tensor:
        return augment(ramp, torch.Generator().manual_seed(seed), index, epoch)[:, 0, 0, 0] == 31

    first = flipped(1)
    assert abs(first.float().mean().item() - 0.5) < 0.03  # a random half starts flipped
    assert torch.equal(flipped(2), ~first) and torch.equal(flipped(3, seed=9), first)  # not from the generator
    other_seed = FlipCrop(padding=0, flip="alternating", flip_seed=4)(ramp, torch.Generator(), index, 1)
    assert not torch.equal(other_seed[:, 0, 0, 0] == 31, first)


def test_reflect_translation_mirrors_the_border() -> None:
    image = torch.arange(32 * 32, dtype=torch.int64).view(1, 1, 32, 32).expand(3000, 1, 32, 32)
    out = FlipCrop(padding=2, flip=False, padding_mode="reflect")(image, torch.Generator().manual_seed(0))
    # an image shifted down by d in (-2..2) has row d at the top: the top row tells the shift
    rows = out[:, 0, 0, 0] // 32
    assert set(rows.tolist()) == {0, 1, 2}  # shifts up repeat rows 1 and 2 as a mirror, never zeros
    top_left = out[:, 0, :3, :3]
    assert (top_left >= 0).all() and len({bytes(t.numpy()) for t in top_left}) == 25  # 5 x 5 offsets


def test_tta_views_flip_and_shift() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    assert tta_views(images, "none") == [(1.0, images)]
    views = tta_views(images, "flip_translate")
    assert len(views) == 6 and sum(w for w, _ in views) == pytest.approx(1.0)
    assert torch.equal(views[1][1], images.flip(3))
    up_left, down_right = views[2][1], views[4][1]
    assert torch.equal(up_left[..., 1:, 1:], images[..., :-1, :-1])  # shifted by one pixel
    assert torch.equal(down_right[..., :-1, :-1], images[..., 1:, 1:])
    assert torch.equal(views[3][1], up_left.flip(3))


def test_lookahead_pulls_toward_the_slow_weights_and_ends_on_them() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    lookahead = Lookahead(model, every=2, decay=0.5, total_steps=4)
    history = []
    for _ in range(4):
        with torch.no_grad():
            model.weight += 1.0  # an optimizer step
        lookahead.after_batch()
        history.append(model.weight.item())
    # step 2: d = 0.5**2 * (2/4)**3 = 1/32: slow = 1/32 * 0 + 31/32 * 2; the fast weights restart there
    assert history[1] == pytest.approx(2 * 31 / 32)
    assert history[2] == pytest.approx(2 * 31 / 32 + 1)
    assert history[3] == pytest.approx(2 * 31 / 32)  # the last step returns to the slow weights
    restored = Lookahead(model, every=2, decay=0.5, total_steps=4)
    restored.load_state_dict(lookahead.state_dict())
    assert restored.steps == 4 and torch.equal(restored.slow["weight"], lookahead.slow["weight"])


TINY_FAST = ["experiment=fast", "device=cpu", "progress=false", "epochs=2", "batch_size=100", "eval_batch_size=100",
             "data.train_subset=200", "data.test_subset=100", "deterministic=true", "lookahead_every=1"]  # fmt: skip


def compose_fast(data_root: Path):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*TINY_FAST, f"data.root={data_root}"])


def test_fast_run_records_tta_and_resumes_to_the_same_numbers(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_fast(data_root)
    whole = train_module.fit(cfg, tmp_path / "whole")
    assert whole["tta"] == "flip_translate" and whole["lookahead"] is True
    assert whole["test_without_tta"]["accuracy"] != whole["test"]["accuracy"] or whole["test"]["accuracy"] == 100
    assert whole["train_seconds"] <= sum(whole["epoch_seconds"])

    real = train_module.train_one_epoch

    def stop_in_epoch_2(*args, **kwargs):
        if args[-1] == 2:
            raise Interrupted("SIGTERM received", 15)
        return real(*args, **kwargs)

    run = tmp_path / "interrupted"
    monkeypatch.setattr(train_module, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(Interrupted):
        train_module.fit(cfg, run)
    monkeypatch.setattr(train_module, "train_one_epoch", real)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["lookahead"]["steps"] == 2
    resumed = train_module.fit(cfg, run, resume=state)
    for key in ("train", "val", "test", "test_without_tta"):
        assert resumed[key] == whole[key], key
    assert json.loads((run / "metrics.json").read_text())["resumed"] is True


def test_fast_preset_reproduces_airbench_hyperparameters() -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fast", "seed=7"])
    momentum, batch = cfg.optimizer.momentum, cfg.batch_size
    kilostep = 1024 * (1 + 1 / (1 - momentum))  # airbench's lr unit, for a loss summed over the batch
    assert cfg.optimizer.lr == pytest.approx(11.5 / kilostep * batch, rel=1e-3)
    assert cfg.optimizer.lr * cfg.optimizer.weight_decay == pytest.approx(0.0153 * batch / kilostep, rel=1e-3)
    assert cfg.label_smoothing == 0.2 and cfg.epochs <= 10 and cfg.augmentation.flip_seed == 7
    assert instantiate(cfg.augmentation).flip == "alternating"
