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
from cifarbench.augmentation import Augmentation, FlipCrop, tta_views
from cifarbench.config import config_dir
from cifarbench.data import Normalize, Split
from cifarbench.errors import Interrupted
from cifarbench.models.fast import FastNet
from cifarbench.optimizers import Lookahead
from cifarbench.runtime import select_precision
from cifarbench.state import load_checkpoint


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
    base = torch.randn(200, 1, 32, 33)
    smooth = base[..., 1:] + 0.8 * base[..., :-1]  # neighbours correlated along the width only
    images = torch.cat([smooth, 0.9 * smooth + 0.1 * torch.randn_like(smooth), torch.randn_like(smooth)], 1)
    model = FastNet(whitening_eps=1e-6)
    model.init_from_data(images)
    out = nn.functional.conv2d(images, model.whiten.weight[:12])  # the 12 directions, without the bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    transposed = nn.functional.conv2d(images, model.whiten.weight[:12].transpose(2, 3))  # height and width swapped
    flat_t = transposed.permute(0, 2, 3, 1).reshape(-1, 12)
    assert not torch.allclose(flat_t.T @ flat_t / len(flat_t), torch.eye(12), atol=0.2)
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
    rows = torch.arange(1, 33, dtype=torch.uint8).view(1, 1, 32, 1)  # row r holds r + 1: no zeros
    image = (rows * 7 + torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32)).expand(3000, 1, 32, 32)
    out = FlipCrop(padding=2, flip=False, padding_mode="reflect")(image, torch.Generator().manual_seed(0))
    assert (out != 0).all()  # a mirrored border, never zero padding
    mirrored = torch.nn.functional.pad(image[:1].float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)[0, 0]
    windows = {bytes(mirrored[y : y + 32, x : x + 32].numpy()) for y in range(5) for x in range(5)}
    seen = {bytes(o[0].numpy()) for o in out}
    assert seen == windows  # every one of the 5 x 5 shifts, and nothing else


def test_tta_views_flip_and_shift() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    assert tta_views(images, "none") == [(1.0, images)]
    views = tta_views(images, "flip_translate")
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    assert torch.equal(views[1][1], images.flip(3))
    up_left, down_right = views[2][1], views[4][1]
    assert torch.equal(up_left[..., 1:, 1:], images[..., :-1, :-1])  # shifted by one pixel
    assert torch.equal(down_right[..., :-1, :-1], images[..., 1:, 1:])
    assert torch.equal(views[3][1], up_left.flip(3))
    assert torch.equal(up_left[..., 0, 1:], images[..., 1, :-1])  # the new top row mirrors row 1


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
    # step 4 (the last): d = 0.5**2 * 1 = 1/4: slow = 1/4 * 62/32 + 3/4 * (62/32 + 2), and the model ends there
    assert history[3] == pytest.approx(2 * 31 / 32 + 1.5)
    with torch.no_grad():
        model.weight += 5.0  # e.g. an early stop: finish() puts the slow weights back
    lookahead.finish()
    assert model.weight.item() == pytest.approx(history[3])
    restored = Lookahead(model, every=2, decay=0.5, total_steps=4)
    restored.load_state_dict(lookahead.state_dict())
    assert restored.steps == 4 and torch.equal(restored.slow["weight"], lookahead.slow["weight"])


TINY_FAST = ["experiment=fast", "device=cpu", "progress=false", "epochs=2", "batch_size=100", "eval_batch_size=100",
             "data.train_subset=200", "data.test_subset=100", "deterministic=true", "lookahead_every=3"]  # fmt: skip


def compose_fast(data_root: Path):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*TINY_FAST, f"data.root={data_root}"])


def test_fast_run_records_tta_and_resumes_to_the_same_numbers(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_fast(data_root)
    whole = train_module.fit(cfg, tmp_path / "whole")
    assert whole["tta"] == "flip_translate" and whole["lookahead"] is True
    assert 0 <= whole["test_without_tta"]["accuracy"] <= 100
    assert whole["train_seconds"] <= sum(whole["epoch_seconds"])
    weights = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]["whiten.weight"]
    assert torch.equal(weights[12:], -weights[:12])  # set from the data by init_from_data, then frozen

    real = train_module.train_one_epoch

    def stop_in_epoch_2(step, batches, *args, **kwargs):
        if batches.epoch == 2:
            raise Interrupted("SIGTERM received", 15)
        return real(step, batches, *args, **kwargs)

    run = tmp_path / "interrupted"
    monkeypatch.setattr(train_module, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(Interrupted):
        train_module.fit(cfg, run)
    monkeypatch.setattr(train_module, "train_one_epoch", real)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["lookahead"]["steps"] == 2
    slow, live = state["lookahead"]["slow"]["classifier.weight"], state["model"]["classifier.weight"]
    assert not torch.equal(slow, live)  # step 2 is between pulls: resume must restore both
    resumed = train_module.fit(cfg, run, resume=state)
    for key in ("train", "val", "test", "test_without_tta"):
        assert resumed[key] == whole[key], key
    assert json.loads((run / "metrics.json").read_text())["resumed"] is True


def test_fast_preset_reproduces_airbench_hyperparameters() -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fast", "seed=7"])
    assert cfg.batch_size == 1024 and cfg.optimizer.momentum == 0.85 and cfg.optimizer.nesterov
    kilostep = 1024 * (1 + 1 / (1 - 0.85))  # airbench's lr unit, for a loss summed over the batch
    assert cfg.optimizer.lr == pytest.approx(11.5 / kilostep * 1024, rel=1e-3)  # the same step for a mean loss
    assert cfg.optimizer.lr * cfg.optimizer.weight_decay == pytest.approx(0.0153 * 1024 / kilostep, rel=1e-3)
    assert cfg.optimizer.norm_lr_scale == 64 and cfg.model.bn_momentum == pytest.approx(0.4)
    assert cfg.scheduler.warmup_fraction == 0.23 and (cfg.scheduler.start_factor, cfg.scheduler.end_factor) == (
        0.2,
        0.07,
    )
    assert (cfg.lookahead_every, cfg.lookahead_decay, cfg.tta) == (5, 0.95, "flip_translate")
    assert cfg.label_smoothing == 0.2 and cfg.epochs <= 10 and cfg.augmentation.flip_seed == 7
    assert instantiate(cfg.augmentation).flip == "alternating" and cfg.augmentation.padding == 2


def test_seed_picks_which_half_starts_flipped_without_a_preset() -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["augmentation=translate", "seed=3"])
    assert instantiate(cfg.augmentation).flip_seed == 3


def test_evaluate_averages_the_logits_of_the_tta_views() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    split = Split(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.arange(6))
    normalize = Normalize("unit", torch.device("cpu"), channels_last=False)
    result = train_module.evaluate(model, split, normalize, select_precision("fp32", torch.device("cpu")), 4,
                                   "flip_translate")  # fmt: skip
    with torch.no_grad():
        logits = sum(w * model(normalize(view)) for w, view in tta_views(split.images, "flip_translate"))
    assert torch.allclose(result.probabilities, logits.softmax(1), atol=1e-6)
    plain = train_module.evaluate(model, split, normalize, select_precision("fp32", torch.device("cpu")), 4)
    assert not torch.allclose(plain.probabilities, result.probabilities)
    # the figures without TTA come from the same pass, and are those of evaluating without it
    assert result.without_tta == {"loss": plain.loss, "accuracy": plain.accuracy} and plain.without_tta is None


class RecordingAugmentation(Augmentation):
    def __init__(self) -> None:
        self.calls: list[tuple[list[int], int]] = []

    def __call__(self, images, generator, index=None, epoch=1):
        self.calls.append((index.tolist(), epoch))
        return images


def test_the_loop_hands_augmentation_each_images_index_and_the_epoch() -> None:
    from test_recipes import batches_of, make_step

    torch.manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40) % 10)
    step = make_step(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), lr=0.1)
    recording = RecordingAugmentation()
    batches = batches_of(split, 16, recording, shuffle=torch.Generator().manual_seed(1))
    batches.epoch = 3
    train_module.train_one_epoch(step, batches)
    indices = [i for batch, _ in recording.calls for i in batch]
    assert sorted(indices) == list(range(40)) and indices != list(range(40))  # every image once, shuffled
    assert {epoch for _, epoch in recording.calls} == {3}
