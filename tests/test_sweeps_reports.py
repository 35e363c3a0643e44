"""Sweeps with their summary, `report`, `evaluate`, `predict`, `runs` and the optional loggers."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from cifarbench.config import config_dir
from cifarbench.inference import evaluate_run
from conftest import SMOKE, cli

TINY_SWEEP = [*(o for o in SMOKE if not o.startswith("batch_size")), "epochs=1", "data.train_subset=100",
              "name=table2", "model=kerascnn"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """004's Table 2 in miniature: dropout {0.3, 0.4} x batch size {64, 128}."""
    cwd = tmp_path_factory.mktemp("sweep")
    cli("train", "-m", *TINY_SWEEP, "model.dropout=0.3,0.4", "batch_size=64,128", cwd=cwd,
        env={"CIFARBENCH_DATA": str(data_root)})  # fmt: skip
    (sweep_dir,) = (cwd / "outputs" / "table2").iterdir()
    return sweep_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_two_by_two_sweep_writes_runs_summary_grid_and_heatmap(sweep: Path) -> None:
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    assert all((j / "metrics.json").is_file() for j in jobs)
    rows = read_csv(sweep / "summary.csv")
    assert sorted((r["model.dropout"], r["batch_size"]) for r in rows) == [
        ("0.3", "128"), ("0.3", "64"), ("0.4", "128"), ("0.4", "64"),
    ]  # fmt: skip
    for row, job in zip(rows, jobs, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert (float(row["model.dropout"]), int(row["batch_size"])) == (
            config["model"]["dropout"],
            config["batch_size"],
        )
        assert row["status"] == "completed"
        assert float(row["test_acc"]) == metrics["test"]["accuracy"]
        assert float(row["test_error"]) == pytest.approx(100 - float(row["test_acc"]))
    summary = (sweep / "summary.md").read_text()
    grid = summary.split("## Grid")[1]
    assert len(re.findall(r"^\| 0\.[34] \| (64|128) \| \d+\.\d\d% \| \d\.\d{3} \|$", grid, re.M)) == 4
    assert (sweep / "heatmap.png").stat().st_size > 1000


def test_a_failed_job_does_not_lose_the_others(tmp_path: Path, run_env: dict) -> None:
    # a bad value is refused before the sweep starts; this one shows only once the data is loaded
    sweep = [o for o in TINY_SWEEP if not o.startswith("data.train_subset")]
    result = cli("train", "-m", *sweep, "data.train_subset=100,50000", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 1
    assert "1 of 2 jobs failed" in result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "table2").iterdir()
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert "data.train_subset=50000 needs 5000 images per class" in rows[1]["error"]
    assert float(rows[0]["test_acc"]) > 0


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_report_over_finished_failed_and_unfinished_runs(sweep: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(sweep, runs / "sweep")
    unfinished = runs / "unfinished"
    shutil.copytree(sweep / "0", unfinished)
    # a run from before run directories had owners: no record, and no lock to ask whether it lives
    for name in ("metrics.json", "confusion_matrix.png", ".cifarbench.lock"):
        (unfinished / name).unlink()
    failed = runs / "failed"
    shutil.copytree(sweep / "0" / ".hydra", failed / ".hydra")
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))

    out = tmp_path / "report"
    cli("report", str(runs), "--out", str(out), "--sort", "test_acc", cwd=tmp_path)
    rows = read_csv(out / "report.csv")
    assert len(rows) == 6
    assert sorted(r["Status"] for r in rows) == ["completed"] * 4 + ["failed", "unfinished"]
    accuracies = [float(r["Test accuracy (%)"]) for r in rows if r["Test accuracy (%)"]]
    assert accuracies == sorted(accuracies, reverse=True) and len(accuracies) == 4
    assert {r["Model"] for r in rows} == {"kerascnn"} and {r["Fine-tuned"] for r in rows} == {"N"}
    assert (out / "report.md").read_text().count("\n| kerascnn |") == 6
    assert (out / "curves.png").stat().st_size > 1000

    page = _Page()
    page.feed((out / "report.html").read_text())
    assert {"html", "table", "th", "td", "img"} <= set(page.tags)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    # curves + the sweep's heatmap + a confusion matrix per run that has one
    assert len(page.images) == 1 + 1 + 4


def test_report_sorts_by_any_column(sweep: Path, tmp_path: Path) -> None:
    cli("report", str(sweep), "--out", str(tmp_path), "--sort", "median_epoch_s", "--ascending", cwd=tmp_path)
    times = [float(r["Median epoch time (s)"]) for r in read_csv(tmp_path / "report.csv")]
    assert times == sorted(times)


def test_evaluate_reproduces_the_recorded_test_numbers(sweep: Path, run_env: dict, monkeypatch) -> None:
    monkeypatch.setenv("CIFARBENCH_DATA", run_env["CIFARBENCH_DATA"])
    for job in ("1", "2"):
        result = evaluate_run(sweep / job)
        assert result["test"]["accuracy"] == result["recorded"]["accuracy"]
        assert result["test"]["loss"] == result["recorded"]["loss"]
    out = cli("evaluate", str(sweep / "3"), cwd=sweep, env=run_env).stdout
    assert "(identical)" in out


def test_predict_on_images_of_any_size(sweep: Path, tmp_path: Path) -> None:
    Image.new("RGB", (200, 120), (200, 30, 30)).save(tmp_path / "big.png")
    Image.new("L", (17, 17), 90).save(tmp_path / "small_gray.jpg")
    Image.new("RGBA", (32, 32), (0, 0, 255, 128)).save(tmp_path / "alpha.png")
    images = [tmp_path / n for n in ("big.png", "small_gray.jpg", "alpha.png")]
    out = cli("predict", str(sweep / "0"), *map(str, images), cwd=tmp_path).stdout
    for image in images:
        line = next(line for line in out.splitlines() if line.startswith(str(image)))
        assert len(re.findall(r"\w+ \d+\.\d%", line)) == 3
    rows = read_csv(tmp_path / "predictions.csv")
    assert [r["image"] for r in rows] == [str(i) for i in images]
    for row in rows:
        probs = [float(row[f"prob{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


def test_runs_lists_newest_first(sweep: Path) -> None:
    out = cli("runs", str(sweep.parent.parent), cwd=sweep).stdout.splitlines()
    assert out[0].startswith("date")
    assert len(out) == 5
    dates = [line[:19] for line in out[1:]]
    assert dates == sorted(dates, reverse=True)
    assert all("kerascnn" in line and "completed" in line and "model.dropout=" in line for line in out[1:])


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} must be installed in CI (the [test] extra)")
        return False
    return True


def test_tensorboard_logger_writes_scalars_figure_and_hparams(tmp_path: Path, run_env: dict) -> None:
    if not _installed("tensorboard"):
        pytest.skip("tensorboard not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("train", *SMOKE, "epochs=2", "data.train_subset=100", "name=tb", "logger=tensorboard", cwd=tmp_path,
        env=run_env)  # fmt: skip
    (run,) = (p.parent for p in (tmp_path / "outputs" / "tb").rglob("metrics.json"))
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2]
    assert "confusion_matrix" in tags["images"]
    hparams = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(hparams) >= 2  # add_hparams writes its own event file


def test_mlflow_logger_writes_params_metrics_and_artifacts(tmp_path: Path, run_env: dict) -> None:
    if not _installed("mlflow"):
        pytest.skip("mlflow not installed")
    cli("train", *SMOKE, "epochs=2", "data.train_subset=100", "name=mlf", "logger=mlflow", cwd=tmp_path,
        env=run_env)  # fmt: skip
    import mlflow

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    (run,) = mlflow.search_runs(experiment_names=["mlf"], output_format="list")
    assert run.data.params["model._target_"] == "cifarbench.models.baseline.BaselineCNN"
    assert "test_accuracy" in run.data.metrics
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.csv", "confusion_matrix.png"} <= artifacts


def test_wandb_logger_writes_its_offline_run(tmp_path: Path, run_env: dict) -> None:
    env = {**run_env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cli("train", *SMOKE, "epochs=2", "data.train_subset=100", "name=wb", "logger=wandb", cwd=tmp_path, env=env)
    (run,) = (tmp_path / "outputs" / "wb").iterdir()
    (offline,) = (run / "wandb").glob("offline-run-*")
    (record,) = offline.glob("run-*.wandb")
    data = record.read_bytes()  # W&B's own record file, synced later with `wandb sync`
    assert all(key in data for key in (b"val_acc", b"train_loss", b"test_accuracy"))
    images = {p.name.split("_2_")[0] for p in (offline / "files" / "media" / "images").glob("*.png")}
    assert images == {"confusion_matrix", "curves"}


def test_missing_logger_names_the_extra(tmp_path: Path, run_env: dict) -> None:
    blocker = tmp_path / "block"
    (blocker / "tensorboard").mkdir(parents=True)
    (blocker / "tensorboard" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {**run_env, "PYTHONPATH": str(blocker)}
    result = cli("train", *SMOKE, "epochs=1", "logger=tensorboard", cwd=tmp_path, env=env, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "pip install 'cifarbench[tensorboard]'" in result.stderr


def test_a_sweep_over_presets(tmp_path: Path, run_env: dict) -> None:
    """-m experiment=glob(...) runs one job per preset; each job's name is its preset's."""
    presets = "experiment=glob(r002_*,exclude=r002_resnet18)"
    cli("train", "-m", presets, *SMOKE, "epochs=1", "data.train_subset=100", cwd=tmp_path, env=run_env)
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["experiment"], r["status"]) for r in rows] == [("r002_cnn3", "completed"), ("r002_fc2", "completed")]


# --- the reports' figures beside the measured ones, seeds aggregated ----------------------------


@pytest.fixture(scope="module")
def two_presets_two_seeds(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """r004_kerascnn (its report gives 80.75% test accuracy) and r002_fc2 (its report gives no
    figure), each with seeds 0 and 1: two recipes of two runs."""
    cwd = tmp_path_factory.mktemp("presets")
    tiny = [*(o for o in SMOKE if not o.startswith("batch_size")), "epochs=1", "data.train_subset=100", "name=pair"]
    cli("train", "-m", *tiny, "experiment=r004_kerascnn,r002_fc2", "seed=0,1", cwd=cwd,
        env={"CIFARBENCH_DATA": str(data_root)})  # fmt: skip
    (sweep_dir,) = (cwd / "outputs" / "pair").iterdir()
    return sweep_dir


def test_report_shows_the_reported_figure_beside_the_measured_one(two_presets_two_seeds: Path, tmp_path: Path) -> None:
    cli("report", str(two_presets_two_seeds), "--out", str(tmp_path), cwd=tmp_path)
    runs = read_csv(tmp_path / "report.csv")
    assert len(runs) == 4  # the per-seed rows stay available
    for row in runs:
        if row["Preset"] == "r004_kerascnn":
            assert (row["Reported metric"], row["Reported (%)"], row["Reported in"]) == (
                "test_acc",
                "80.75",
                "004 Table 1",
            )
            assert float(row["Measured (%)"]) == float(row["Test accuracy (%)"])
            assert float(row["Difference (points)"]) == pytest.approx(float(row["Measured (%)"]) - 80.75, abs=0.011)
        else:
            assert row["Preset"] == "r002_fc2"
            assert row["Reported (%)"] == row["Measured (%)"] == row["Difference (points)"] == ""  # empty, not 0
    report = (tmp_path / "report.md").read_text()
    fc2_line = next(line for line in report.splitlines() if line.startswith("| r002_fc2 "))
    assert "| 0 |" not in fc2_line.replace("| 0, 1 |", "")


def test_runs_that_differ_only_in_their_seed_are_one_row(two_presets_two_seeds: Path, tmp_path: Path) -> None:
    cli("report", str(two_presets_two_seeds), "--out", str(tmp_path), cwd=tmp_path)
    runs = read_csv(tmp_path / "report.csv")
    recipes = {row["recipe"].split()[0]: row for row in read_csv(tmp_path / "recipes.csv")}
    assert set(recipes) == {"r004_kerascnn", "r002_fc2"}  # labels: the preset, then the overrides
    for name, recipe in recipes.items():
        accuracies = [float(r["Test accuracy (%)"]) for r in runs if r["Preset"] == name]
        assert recipe["n"] == "2" and recipe["seeds"] == "0, 1"
        assert float(recipe["test_acc_mean"]) == pytest.approx(sum(accuracies) / 2, abs=1e-3)
        expected_sd = abs(accuracies[0] - accuracies[1]) / 2**0.5  # the sample sd of two values
        assert float(recipe["test_acc_sd"]) == pytest.approx(expected_sd, abs=1e-3)
    markdown = (tmp_path / "report.md").read_text()
    assert re.search(
        r"^\| r004_kerascnn [^|]*\| kerascnn \| 2 \| 0, 1 \| 1\.0 \| \d+\.\d\d ± \d+\.\d\d \|", markdown, re.M
    )
    summary = (two_presets_two_seeds / "summary.md").read_text()
    assert "## Seeds aggregated" in summary
    assert re.search(r"^\| r002_fc2 [^|]*\| fc2 \| 2 \| 0, 1 \|", summary, re.M)


def test_a_grid_job_is_compared_with_its_own_cell_of_the_table() -> None:
    from cifarbench.runs import Run

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        table2 = compose("config", overrides=["experiment=r004_table2", "model.dropout=0.4", "batch_size=128"])
        table1 = compose("config", overrides=["experiment=r004_kerascnn"])  # batch 64, dropout 0.3: not the grid
    config = OmegaConf.to_container(table2, resolve=True)
    figure = {"metric": "test_acc", "value": 85.1, "source": "004 Table 2", "note": table2.reported.note,
              "loss": 0.482, "comparable": None}  # fmt: skip
    reported = Run(Path("x"), "completed", config=config).reported
    scope = config["model"]["dropout_scope"]
    assert reported.pop("reading").startswith(f"Reading: {scope} dropout")  # r004_kerascnn's readings, shared
    assert reported == figure
    config["batch_size"] = 32  # no cell of Table 2, and the grid's preset has no figure of its own
    assert Run(Path("x"), "completed", config=config).reported is None
    assert Run(Path("x"), "completed", config=OmegaConf.to_container(table1)).reported["value"] == 80.75


def test_the_reported_figure_and_its_note_come_from_the_preset_as_it_is_now() -> None:
    """A note or a correction added to a preset after its runs finished reaches their reports."""
    from cifarbench.runs import Run

    outdated = {"reported": {"metric": "test_acc", "value": 1.0, "source": "an old copy"}}
    run = Run(Path("x"), "completed", config=outdated, choices={"experiment": "r004_kerascnn"})
    assert run.reported["value"] == 80.75 and run.reported["source"] == "004 Table 1"
    gone = Run(Path("x"), "completed", config=outdated, choices={"experiment": "no_such_preset"})
    assert gone.reported["value"] == 1.0  # the preset is gone: the run's own copy


def test_results_markdown_splits_the_reports_experiments_from_other_recipes_and_lists_what_cannot_run(
    two_presets_two_seeds: Path, sweep: Path, tmp_path: Path
) -> None:
    """`report --md` (how docs/results.md is made): the reports' presets (rNNN_...) in one table, other
    recipes in another, and the ImageNet-weight presets, which cannot run offline, with their command."""
    cli("report", str(two_presets_two_seeds), str(sweep), "--md", str(tmp_path / "results.md"), cwd=tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert text.startswith(f"Generated by `cifarbench report {two_presets_two_seeds} {sweep} --md")
    reports, rest = text.split("## cifarbench's recipes")
    assert "| r004_kerascnn " in reports and "| r002_fc2 " in reports and "| table2 " not in reports
    assert "| table2 " in rest.split("## Not measured here")[0]  # a sweep of no preset: not a report's row
    missing = rest.split("## Not measured here")[1].split("## Runs")[0]
    weights = "starts from ImageNet weights, which cannot be downloaded on this project's machines"
    assert (
        f"| r002_resnet18 | val_acc 82.0 | 002 section 2.2 | {weights} | `cifarbench train experiment=r002_resnet18` |"
        in missing
    )
    # every preset of a report and every search preset with no run, with why and its command
    assert "| r000_improved_100 | test_acc 81.95 | 000 Table 1 | about 4.6 h" in missing
    assert "`cifarbench train -m search=r004_table2` |" in missing and "val_acc 73.06%" in missing
    assert "| r003_mfm24 | val_acc 86.78 | 003 Table 1 row 10 | no completed run among the runs read |" in missing
    assert "| r004_kerascnn " not in missing and "| r002_fc2 " not in missing  # run in the fixture
    # 004's test loss beside its accuracy, and the run's own
    (kerascnn,) = [line.split(" | ") for line in reports.splitlines() if line.startswith("| r004_kerascnn ")]
    assert kerascnn[9] == "0.548" and float(kerascnn[6]) > 0


def test_results_markdown_sets_every_recipe_of_cifarbench_against_the_report_s_best_for_its_model(
    two_presets_two_seeds: Path, sweep: Path, tmp_path: Path
) -> None:
    """Below the recipes, each model: its report's best figure beside each of cifarbench's own recipes
    for it (here the four jobs of a sweep of no preset), all of them listed, none picked by test accuracy."""
    cli("report", str(two_presets_two_seeds), str(sweep), "--md", str(tmp_path / "results.md"), cwd=tmp_path)
    text = (tmp_path / "results.md").read_text()
    section = text.split("## Each model: the report's best against cifarbench's recipes")[1].split("\n## ")[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")][1:]
    kerascnn = [row for row in rows if row[0] == "kerascnn"]
    assert sorted(row[4].split()[0] for row in kerascnn) == ["table2"] * 4  # every job of the sweep, one row each
    report_rows = [line for line in text.split("## cifarbench's recipes")[0].splitlines() if line.startswith("| ")]
    (measured,) = [line.split(" | ")[10] for line in report_rows if line.startswith("| r004_kerascnn ")]
    for row in kerascnn:
        assert row[1].split()[0] == "r004_kerascnn"  # the recipe's label: the preset, then its overrides
        assert row[2:4] == ["test_acc 80.75", measured]  # 004's figure, and this project's of that recipe
        assert row[5] == "1" and row[7] == "-"  # one completed run, tested without TTA: no second figure
        assert float(row[8]) == pytest.approx(float(row[6]) - 80.75, abs=0.011)
    assert [row for row in rows if row[0] == "fc2"] == [["fc2", *["-"] * 10]]  # 002 gives no figure; no own recipe


def test_each_model_is_set_against_its_report_s_highest_test_figure_and_every_own_recipe_is_listed() -> None:
    """model_table on made-up runs: the report's best is its highest test figure (a validation figure
    only where there is no test one), a grid's best cell counts, seeds are one row, a recipe whose
    runs all failed shows n = 0 rather than vanishing, and a model with no report has no comparison."""
    from cifarbench.report.comparison import model_table
    from cifarbench.report.recipes import recipes
    from cifarbench.runs import Run

    def run(preset: str, model: str, config: dict, accuracy: float | None, **metrics: object) -> Run:
        choices = {"experiment": preset, "model": model}
        if accuracy is None:
            return Run(Path(preset), "failed", config, {}, choices=choices)
        metrics = {"test": {"accuracy": accuracy}, "epochs_run": 15, "epoch_seconds": [60.0] * 15, **metrics}
        return Run(Path(preset), "completed", config, metrics, choices=choices)

    val_figure = {"metric": "val_acc", "value": 90.0, "source": "made up"}
    tta = {"tta": "flip_translate"}
    runs = [
        run("r004_kerascnn", "kerascnn", {"batch_size": 64}, 76.0),  # 004 Table 1: 80.75
        run("r004_table2", "kerascnn", {"batch_size": 64, "model": {"dropout": 0.4}}, 77.0),  # Table 2: 85.8
        run("r004_table2", "kerascnn", {"batch_size": 128, "model": {"dropout": 0.3}}, 78.0),  # Table 2: 84.5
        run("modern_recipe", "kerascnn", {"seed": 0, **tta}, 88.0, test_without_tta={"accuracy": 87.0}),
        run("modern_recipe", "kerascnn", {"seed": 1, **tta}, 89.0, test_without_tta={"accuracy": 88.0}),
        run("modern_recipe", "kerascnn", {"seed": 0, "optimizer": {"lr": 9.0}}, None),  # diverged: no test
        run("r009_val", "m", {"reported": val_figure, "a": 1}, 60.0),
        run("r009_test", "m", {"reported": {**val_figure, "metric": "test_acc", "value": 70.0}, "a": 2}, 65.0),
        run("mine", "m", {"a": 3}, 80.0),
        run("mine", "orphan", {"a": 4}, 50.0),
    ]
    rows = {(row[0], row[5], row[4]): row for row in model_table(recipes(runs))}
    keras = rows[("kerascnn", 2, "modern_recipe")]
    # Table 2's best cell, measured 77.00 here; labelled by its dropout, which its preset alone does not give
    assert keras[1:4] == ["r004_table2 model.dropout=0.4", "test_acc 85.8", "77.00"]
    assert keras[6:] == ["88.50 ± 0.71", "87.50 ± 0.71", 2.7, 15.0, 15.0]  # seeds 0 and 1 as one row
    assert rows[("kerascnn", 0, "modern_recipe")][6:] == [None] * 5  # listed, with its runs' count: none finished
    assert rows[("m", 1, "mine")][1:4] + rows[("m", 1, "mine")][8:9] == ["r009_test", "test_acc 70.0", "65.00", 10.0]
    assert rows[("orphan", 1, "mine")][1:4] == [None] * 3 and rows[("orphan", 1, "mine")][8] is None
    assert len(rows) == 4  # the reports' own recipes are not rows of cifarbench's


def test_a_figure_of_another_network_is_not_comparable_and_its_note_says_why() -> None:
    """002's ~73% belongs to its whole custom-network phase, not to the three-layer CNN r002_cnn3 runs:
    the recipe row and the model row say 'not comparable' instead of a difference, and the note shows
    however close the figures are."""
    from cifarbench.report.comparison import model_table
    from cifarbench.report.recipes import NOT_COMPARABLE, recipes
    from cifarbench.runs import Run

    def run(preset: str, accuracy: float, **config: object) -> Run:
        metrics = {"test": {"accuracy": accuracy}, "epochs_run": 10, "epoch_seconds": [6.0] * 10,
                   "test_weights_epoch": 10}  # fmt: skip
        history = [{"epoch": 10, "val_acc": 72.0}]
        return Run(Path(preset), "completed", config, metrics, history=history,
                   choices={"experiment": preset, "model": "cnn3"})  # fmt: skip

    entries = recipes([run("r002_cnn3", 72.5), run("modern_recipe", 80.0)])
    (cnn3,) = [e for e in entries if e["recipe"] == "r002_cnn3"]
    assert cnn3["measured"].mean == 72.0 and cnn3["difference"] == NOT_COMPARABLE  # 1 point off, still not compared
    assert cnn3["note"].startswith("002 contradicts itself.")
    (row,) = model_table(entries)
    assert row[1] == "r002_cnn3" and row[8] == NOT_COMPARABLE


def test_two_presets_that_train_the_same_config_are_two_recipes() -> None:
    """r004_table2's cell (dropout 0.3, batch 64) trains r004_kerascnn's config, but each is held against
    its own report figure (85.2 and 80.75): one row each, not one row of n = 2 under one figure."""
    from cifarbench.report.recipes import recipes
    from cifarbench.runs import Run

    config = {"batch_size": 64, "model": {"dropout": 0.3}, "seed": 0}
    runs = [
        Run(Path(preset), "completed", config, {"test": {"accuracy": 76.04}}, choices={"experiment": preset})
        for preset in ("r004_kerascnn", "r004_table2")
    ]
    entries = recipes(runs)
    assert [(e["recipe"], e["n"], e["reported"]) for e in entries] == [
        ("r004_kerascnn", 1, 80.75),
        ("r004_table2", 1, 85.2),
    ]


def test_a_run_is_labelled_with_the_reading_it_trained_when_the_preset_no_longer_gives_it() -> None:
    """A preset's default reading may change after its runs (004's dropout: rising, then what validation
    favoured). A run whose saved model settings the preset no longer composes to is labelled with them,
    as if overridden, and is one recipe with runs that did override them; a run saved before the
    readings were options (no dropout_scope, convs_per_block or init in its config) trained the model
    class's defaults; one that chose a reading the preset now gives is the preset's row. Each row
    carries its reading's note."""
    from cifarbench.report.recipes import recipes
    from cifarbench.runs import Run

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        now = OmegaConf.to_container(compose("config", overrides=["experiment=r004_kerascnn"]), resolve=True)
    scope = now["model"]["dropout_scope"]
    other = {"rising": "uniform", "uniform": "rising"}[scope]

    def run(model: dict, *overrides: str) -> Run:
        return Run(Path("x"), "completed", {**now, "model": model}, {"test": {"accuracy": 76.0}},
                   choices={"experiment": "r004_kerascnn", "model": "kerascnn"},
                   overrides=["experiment=r004_kerascnn", "progress=false", *overrides])  # fmt: skip

    changed = run({**now["model"], "dropout_scope": other})  # trained when `other` was the default
    overridden = run({**now["model"], "dropout_scope": other}, f"model.dropout_scope={other}")
    current = run(now["model"])
    given = run(now["model"], f"model.dropout_scope={scope}")  # chosen before the preset took it as its default
    assert changed.since == [f"model.dropout_scope={other}"] and overridden.since == [] and current.since == []
    assert changed.label == overridden.label == f"r004_kerascnn model.dropout_scope={other}"
    assert current.label == given.label == "r004_kerascnn"
    entries = {e["recipe"]: e for e in recipes([changed, overridden, current, given])}
    expected = {"r004_kerascnn": 2, f"r004_kerascnn model.dropout_scope={other}": 2}
    assert {k: e["n"] for k, e in entries.items()} == expected
    assert entries["r004_kerascnn"]["note"].startswith(f"Reading: {scope} dropout")
    assert entries[f"r004_kerascnn model.dropout_scope={other}"]["note"].startswith(f"Reading: {other} dropout")

    convs = 3 - now["model"]["convs_per_block"]  # the reading the preset does not give: 1 or 2
    other_convs = run({**now["model"], "convs_per_block": convs}, f"model.convs_per_block={convs}")
    own = {1: "Reading: one convolution a block.", 2: "Reading: two convolutions a block."}[convs]
    assert other_convs.reported["reading"].startswith(own)  # its own reading first
    assert f"Reading: {scope} dropout." in other_convs.reported["reading"]

    readings = ("dropout_scope", "convs_per_block", "init")
    before = run({k: v for k, v in now["model"].items() if k not in readings})
    class_defaults = {"dropout_scope": "rising", "convs_per_block": 1, "init": "torch"}
    assert before.trained_config["model"] == {**now["model"], **class_defaults}
    now_differs = {f"model.{key}={value}" for key, value in class_defaults.items() if now["model"][key] != value}
    assert set(before.since) == now_differs

    # a run that overrode one reading and took the others by default: its notes in its label's order
    keras = run({**now["model"], **class_defaults, "init": "keras"}, "model.init=keras")
    assert keras.label.startswith("r004_kerascnn model.init=keras") and set(keras.since) == now_differs - {
        "model.init=torch"
    }
    notes = keras.reported["reading"]
    note_of = {
        "model.dropout_scope=rising": "Reading: rising dropout.",
        "model.convs_per_block=1": "Reading: one convolution a block.",
    }
    places = [notes.index(note_of[setting]) for setting in keras.since]
    assert notes.startswith("Reading: Keras's defaults.") and places == sorted(places)

    # `+key=` from before the key was in the model's config still composes (as `++key=`)
    added = run({**now["model"], "convs_per_block": convs, "dropout_scope": other}, f"+model.convs_per_block={convs}")
    assert added.since == [f"model.dropout_scope={other}"]
    assert added.label == f"r004_kerascnn +model.convs_per_block={convs} model.dropout_scope={other}"
    widened = run({**now["model"], "dense": 64, "dropout_scope": other}, "+model.dense=64")  # not a reading
    assert widened.since == [f"model.dropout_scope={other}"]
