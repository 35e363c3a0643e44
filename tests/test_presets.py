"""Every experiment preset composes and trains one tiny step; each names its report and command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cifarbench.config import config_dir, group_options
from cifarbench.train import fit
from conftest import cli

PRESETS = group_options("experiment")
TINY = [
    "device=cpu",
    "progress=false",
    "epochs=1",
    "batch_size=10",
    "eval_batch_size=10",
    "data.train_subset=10",
    "data.val_size=10",
    "data.test_subset=10",
]


def compose_preset(preset: str, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"experiment={preset}", *overrides])


def test_the_reports_experiments_all_have_presets() -> None:
    expected = {
        "r000_student", "r000_improved_10", "r000_improved_50", "r000_improved_100", "r000_resnet50",
        "r000_efficientnet_b0", "r000_vgg16", "r001_model1_baseline", "r001_model2_resnet18",
        "r001_model3_densenet121", "r001_model4_densenet161_frozen", "r001_model5_densenet161_steplr",
        "r002_fc2", "r002_cnn3", "r002_resnet18", "r003_mfm24", "r003_vgg16_last4", "r003_resnet50",
        "r003_inception_v3", "r004_kerascnn", "r004_resnet18", "smoke", "best_improved",
    }  # fmt: skip
    assert expected <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_header_names_its_command(preset: str) -> None:
    text = (config_dir() / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert f"cifarbench train experiment={preset}" in text
    if preset.startswith("r0"):
        assert f"../shared/papers/{preset[1:4]}_" in text  # the report file it reproduces


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_trains_one_step(preset: str, data_root: Path, tmp_path: Path) -> None:
    cfg = compose_preset(preset, *TINY, f"data.root={data_root}")
    assert cfg.name == preset
    if "weights" in cfg.model:
        assert preset == "smoke" or cfg.model.weights == "imagenet"  # pretrained presets default to ImageNet
        with open_dict(cfg):
            cfg.model.weights = "none"  # no downloads here
    metrics = fit(cfg, tmp_path)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["accuracy"] == metrics["test"]["accuracy"]


def test_preset_through_the_cli(tmp_path: Path, run_env: dict) -> None:
    shown = cli("train", "--cfg", "job", "experiment=r001_model5_densenet161_steplr", cwd=tmp_path).stdout
    assert "_target_: torch.optim.Adamax" in shown and "step_size: 5" in shown and "freeze: backbone" in shown
    cli("train", "experiment=smoke", cwd=tmp_path, env=run_env)
    (metrics,) = (tmp_path / "outputs" / "smoke").rglob("metrics.json")
    assert json.loads(metrics.read_text())["data_sizes"] == {"train": 500, "val": 100, "test": 200}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_passes_the_config_check_and_never_picks_weights_on_the_test_set(preset: str) -> None:
    from cifarbench.config_check import check_overrides

    cfg = check_overrides([f"experiment={preset}"])
    if cfg.data.val_size == 0:  # validated on the test set, as the report did: its final weights are tested
        assert cfg.test_weights == "last" and not cfg.early_stopping.enabled
