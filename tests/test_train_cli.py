"""`cifarbench train` through the real console script on a tiny subset of the real data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, cli

RUN_FILES = [
    "config.yaml",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    "metrics.json",
    "history.csv",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "curves.png",
    "classification_report.txt",
    "samples.png",
    "train.log",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
]


def only_run_dir(root: Path) -> Path:
    runs = [p.parent for p in root.rglob("metrics.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_smoke_run_writes_a_complete_run_directory(tmp_path: Path, run_env: dict) -> None:
    epochs = 2
    cli("train", *SMOKE, f"epochs={epochs}", "name=smoke", cwd=tmp_path, env=run_env)
    run = only_run_dir(tmp_path / "outputs" / "smoke")
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{name} missing from {run}"

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["epochs_run"] == epochs and len(metrics["epoch_seconds"]) == epochs
    test = metrics["test"]
    assert test["error"] == pytest.approx(100 - test["accuracy"])
    assert metrics["data_sizes"] == {"train": 300, "val": 100, "test": 200}
    assert metrics["params"]["total"] == 1_070_794
    assert set(test["per_class"]) == {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    }
    for key in ("precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
        assert 0 <= test[key] <= 1

    with (run / "confusion_matrix.csv").open() as fh:
        rows = list(csv.reader(fh))
    counts = [[int(v) for v in row[1:]] for row in rows[1:]]
    total = sum(map(sum, counts))
    trace = sum(counts[i][i] for i in range(10))
    assert total == 200
    assert 100 * trace / total == pytest.approx(test["accuracy"])

    with (run / "history.csv").open() as fh:
        history = list(csv.DictReader(fh))
    assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
    assert float(history[0]["lr"]) == pytest.approx(1e-3)

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == epochs and saved["data"]["train_subset"] == 300
    assert "epoch 2/2" in (run / "train.log").read_text()


def test_same_second_runs_get_their_own_directories(tmp_path: Path, run_env: dict) -> None:
    """Two runs are started together; neither may overwrite the other."""
    import subprocess

    args = ["cifarbench", "train", *SMOKE, "epochs=1", "name=twin", "data.train_subset=100"]
    env = {**__import__("os").environ, **run_env}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    runs = sorted(p.parent for p in (tmp_path / "outputs" / "twin").rglob("metrics.json"))
    assert len(runs) == 2


def test_multirun_writes_one_directory_per_job(tmp_path: Path, run_env: dict) -> None:
    cli(
        "train",
        "-m",
        *SMOKE,
        "epochs=1",
        "data.train_subset=100",
        "name=sweep",
        "model.dropout=0.2,0.6",
        cwd=tmp_path,
        env=run_env,
    )
    sweeps = list((tmp_path / "outputs" / "sweep").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.parent for p in sweeps[0].rglob("metrics.json"))
    assert [j.name for j in jobs] == ["0", "1"]
    dropouts = [yaml.safe_load((j / "config.yaml").read_text())["model"]["dropout"] for j in jobs]
    assert dropouts == [0.2, 0.6]


def test_help_lists_groups_and_options(tmp_path: Path) -> None:
    from cifarbench.config import GROUPS, group_options

    top = cli("--help", cwd=tmp_path).stdout
    train_help = cli("train", "--help", cwd=tmp_path).stdout
    assert "train" in top and "cifarbench train" in train_help
    for group in GROUPS:
        options = ", ".join(group_options(group))
        assert f"  {group:<13} {options}" in top
        assert f"{group}: {options}" in train_help


def test_without_data_one_clear_line_and_status_2(tmp_path: Path) -> None:
    result = cli(
        "train", "data.download=false", f"data.root={tmp_path / 'empty'}", "progress=false", cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cifarbench data import PATH" in lines[0] and "download" in lines[0]


def test_validate_every_0_never_validates_and_the_test_is_the_only_pass(tmp_path: Path, run_env: dict) -> None:
    """The fast recipes' case: the validation set is the test set, and the final test reads it once."""
    args = ["epochs=2", "validate_every=0", "test_weights=last", "data.val_size=0", "name=never"]
    cli("train", *SMOKE, *args, cwd=tmp_path, env=run_env)
    run = only_run_dir(tmp_path / "outputs" / "never")
    with (run / "history.csv").open() as fh:
        assert [row["val_acc"] in ("", "nan") for row in csv.DictReader(fh)] == [True, True]

    def not_json(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant} for a missing figure; JSON has null for that")

    metrics = json.loads((run / "metrics.json").read_text(), parse_constant=not_json)
    assert metrics["val"] is None and metrics["best_epoch"] is None and metrics["test_weights_epoch"] == 2
    assert metrics["status"] == "completed" and 0 < metrics["test"]["accuracy"] <= 100
    log = (run / "train.log").read_text()
    assert log.count("not validated") == 2 and "val loss" not in log


def test_validate_every_skips_validation_but_never_the_last_epoch(tmp_path: Path, run_env: dict) -> None:
    cli("train", *SMOKE, "epochs=3", "validate_every=2", "name=sparse", cwd=tmp_path, env=run_env)
    run = only_run_dir(tmp_path / "outputs" / "sparse")
    with (run / "history.csv").open() as fh:
        validated = [row["epoch"] for row in csv.DictReader(fh) if row["val_acc"] not in ("", "nan")]
    assert validated == ["2", "3"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["best_epoch"] in (2, 3)
    assert "epoch 1/3" in (run / "train.log").read_text() and "not validated" in (run / "train.log").read_text()
