"""`hydra/sweeper=optuna`: search with pruning, through the real CLI on tiny subsets."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna  # the [optuna] extra, part of [test]
import pytest
import yaml

from cifarbench.config import group_options
from cifarbench.config_check import check_overrides
from cifarbench.errors import UserError
from conftest import SMOKE, cli

TINY = [*SMOKE, "data.train_subset=200", "threads=1"]
SEARCH = ["-m", "hydra/sweeper=optuna"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def study_states(sweep_dir: Path) -> dict[int, str]:
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return {t.number: t.state.name for t in study.get_trials()}


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    cwd = tmp_path_factory.mktemp("search")
    sweep_dir = cwd / "search"
    result = cli("train", *SEARCH, *TINY, "epochs=2", "hydra.sweeper.n_trials=4", "model.dropout=interval(0,0.6)",
                 "optimizer.lr=tag(log,interval(1e-4,1e-2))", "batch_size=choice(32,64)",
                 f"hydra.sweep.dir={sweep_dir}", cwd=cwd, env={"CIFARBENCH_DATA": str(data_root)})  # fmt: skip
    (cwd / "search.log").write_text(result.stdout + result.stderr)
    return sweep_dir


def test_a_search_writes_its_summary_and_plots_and_tests_only_the_best_trial(search: Path) -> None:
    trials = read_csv(search / "summary.csv")
    assert [t["trial"] for t in trials] == ["0", "1", "2", "3"]
    assert set(study_states(search).values()) <= {"COMPLETE", "PRUNED"}
    for trial in trials:  # each trial is a normal run directory with the searched values in its config
        config = yaml.safe_load((search / trial["trial"] / "config.yaml").read_text())
        assert 0 <= config["model"]["dropout"] <= 0.6 and 1e-4 <= config["optimizer"]["lr"] <= 1e-2
        assert config["batch_size"] in (32, 64)
        assert float(trial["model.dropout"]) == pytest.approx(config["model"]["dropout"], rel=1e-3)
    completed = [t for t in trials if t["status"] == "completed"]
    best = max(completed, key=lambda t: float(t["val_acc"]))  # chosen on validation
    tested = [t for t in trials if t["test_acc"]]
    assert [t["trial"] for t in tested] == [best["trial"]]
    metrics = json.loads((search / best["trial"] / "metrics.json").read_text())
    assert float(best["test_acc"]) == pytest.approx(metrics["test"]["accuracy"], abs=0.01)
    assert (search / best["trial"] / "confusion_matrix.png").is_file()
    for trial in trials:
        if trial is not best:  # the test set was never read for them
            other = search / trial["trial"]
            assert json.loads((other / "metrics.json").read_text()).get("test") is None
            assert not (other / "confusion_matrix.png").exists()
    summary = (search / "summary.md").read_text()
    assert f"**Best trial {best['trial']}**" in summary
    for plot in ("optimization_history.png", "slice.png", "intermediate_values.png"):
        assert (search / plot).stat().st_size > 10_000
    assert "categorical units" not in (search.parent / "search.log").read_text()  # matplotlib's chatter


def test_report_understands_a_search_directory(search: Path, tmp_path: Path) -> None:
    cli("report", str(search), "--out", str(tmp_path / "report"), cwd=tmp_path)
    text = (tmp_path / "report" / "report.md").read_text()
    best = next(t for t in read_csv(search / "summary.csv") if t["test_acc"])
    row = next(line for line in text.splitlines() if line.startswith(f"| {search} |"))
    assert f"| {best['trial']} |" in row and best["test_acc"] in row
    assert "| 4 |" in row
    dropout = yaml.safe_load((search / best["trial"] / "config.yaml").read_text())["model"]["dropout"]
    recipes = [line for line in text.splitlines() if line.startswith("| ") and "model.dropout=" in line]
    recipe = next(line for line in recipes if line != row)
    assert f"model.dropout={float(f'{dropout:.4g}')} " in recipe  # the searched value, short, as in summary.md


def test_a_stalled_trial_is_pruned_and_keeps_its_run_directory(tmp_path: Path, run_env: dict) -> None:
    """Two trials that learn, then one rigged to stall (a learning rate of 1e-9): with two finished
    trials to compare with, the median pruner stops it before its last epoch."""
    sweep_dir = tmp_path / "search"
    cli("train", *SEARCH, *TINY, "data.train_subset=500", "epochs=4", "hydra.sweeper.n_trials=3",
        "optimizer.lr=choice(0.003,1e-9)",
        "hydra.sweeper.enqueue=[{optimizer.lr:0.003},{optimizer.lr:0.003},{optimizer.lr:1e-9}]",
        "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=run_env)  # fmt: skip
    assert study_states(sweep_dir) == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    stalled = sweep_dir / "2"
    metrics = json.loads((stalled / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and 1 <= metrics["epochs_run"] < 4
    assert "pruned by the search's MedianPruner" in metrics["error"]
    assert (stalled / "checkpoints" / "last.pt").is_file() and (stalled / "history.csv").is_file()
    assert [t["status"] for t in read_csv(sweep_dir / "summary.csv")] == ["completed", "completed", "pruned"]


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path: Path, run_env: dict) -> None:
    sweep_dir = tmp_path / "search"
    args = ["train", *SEARCH, *TINY, "epochs=3", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3",
            "model.dropout=interval(0,0.6)", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    process = subprocess.Popen(["cifarbench", *args], cwd=tmp_path, env={**os.environ, **run_env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log = sweep_dir / "1" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "epoch 1/3" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the search ended before trial 1 trained"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert study_states(sweep_dir) == {0: "COMPLETE", 1: "RUNNING"}
    first_log = (sweep_dir / "0" / "train.log").read_text()

    refused = cli("train", f"resume={sweep_dir / '1'}", cwd=tmp_path, env=run_env, check=False)
    assert refused.returncode == 2 and "is a trial of the search" in refused.stderr  # alone it would read the test

    result = cli(*args, cwd=tmp_path, env=run_env)
    assert study_states(sweep_dir) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    assert (sweep_dir / "0" / "train.log").read_text() == first_log  # trial 0 did not run again
    resumed = (sweep_dir / "1" / "train.log").read_text()
    assert "resumed" in resumed and resumed.count("epoch 1/3") == 1  # trial 1 went on from its checkpoint
    assert "best trial" in result.stdout
    params = [read_csv(sweep_dir / "summary.csv")[i]["model.dropout"] for i in range(3)]
    assert len(set(params)) == 3  # the resumed sampler asks for new values, not its first ones again


def test_parallel_trials_share_the_study(tmp_path: Path, run_env: dict) -> None:
    sweep_dir = tmp_path / "search"
    cli("train", *SEARCH, *[o for o in TINY if o != "threads=1"], "epochs=1", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=2", "model.dropout=interval(0,0.6)",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=run_env)  # fmt: skip
    assert study_states(sweep_dir) == {0: "COMPLETE", 1: "COMPLETE"}
    for trial in ("0", "1"):  # two at once on this machine's cores: one thread each
        assert "torch threads: 1" in (sweep_dir / trial / "train.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hydra/sweeper=optuna", "model.dropout=interval(0,0.6)"], "add -m"),
        (["-m", "search=r004_table2", "data.val_size=0"], "data.val_size=0 is refused in a search"),
        (["-m", "search=r004_table2", "validate_every=0"], "validate_every=0 is refused in a search"),
    ],
)
def test_a_bad_search_is_one_line_before_anything_runs(args: list[str], message: str, tmp_path: Path) -> None:
    result = cli("train", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.dropout=interval(0,1.5)"], "sweep job model.dropout=1.5: model.dropout=1.5 is not allowed"),
        (["batch_size=choice(0,64)", "model.dropout=0.1"], "batch_size=0 is not allowed"),
        (["optimizer.lr=tag(log,interval(0,1e-2))"], "needs low > 0"),
        (["model.dropout=interval(0.5,0.2)"], "interval(low, high) needs low < high"),
        (["batch_size=tag(log,choice(32,64))"], "apply to interval(...) only"),
        (["epochs=tag(int,interval(1,2.5))"], "needs whole numbers"),
        (["model.dropout=interval(0,0.5)", "hydra.sweeper.enqueue=[{epochs:3}]"], "enqueue names epochs, which is not"),
    ],
)
def test_every_value_a_search_may_try_is_checked_first(args: list[str], message: str) -> None:
    """The same check `cifarbench train` runs before Hydra starts (the two cases above show it is
    one line and exit status 2 there)."""
    with pytest.raises(UserError) as caught:
        check_overrides(["-m", "hydra/sweeper=optuna", *args])
    assert message in str(caught.value)


def test_another_search_into_the_same_directory_is_refused(search: Path, tmp_path: Path, run_env: dict) -> None:
    before = (search / "summary.csv").read_text()
    result = cli("train", *SEARCH, *TINY, "epochs=2", "hydra.sweeper.n_trials=4", "model.dropout=interval(0,0.5)",
                 f"hydra.sweep.dir={search}", cwd=tmp_path, env=run_env, check=False)  # fmt: skip
    assert result.returncode == 2
    assert f"{search} holds another search" in result.stderr
    assert (search / "summary.csv").read_text() == before


def test_a_search_without_optuna_names_the_extra(tmp_path: Path, run_env: dict) -> None:
    blocker = tmp_path / "block"
    (blocker / "optuna").mkdir(parents=True)
    (blocker / "optuna" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {**run_env, "PYTHONPATH": str(blocker)}
    result = cli("train", *SEARCH, *TINY, "model.dropout=interval(0,0.6)", cwd=tmp_path, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cifarbench: error: hydra/sweeper=optuna needs the optional 'optuna' extra, which is not installed: "
        "pip install 'cifarbench[optuna]'"
    )


def test_the_search_space_follows_hydras_optuna_syntax() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from cifarbench.search.space import search_space

    space = search_space(["model.dropout=interval(0,0.6)", "epochs=tag(int,interval(5,30))",
                          "optimizer.lr=tag(log,interval(1e-4,1e-2))", "batch_size=tag(int,log,interval(16,256))",
                          "optimizer=choice(adam,sgd)", "seed=1,2", "name=x"])  # fmt: skip
    assert space.distributions == {
        "model.dropout": FloatDistribution(0.0, 0.6),
        "epochs": IntDistribution(5, 30),  # Hydra reads the ends as 5.0 and 30.0: tag(int, ...) asks for integers
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "batch_size": IntDistribution(16, 256, log=True),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "seed": CategoricalDistribution([1, 2]),
    }
    assert space.fixed == ["name=x"]


@pytest.mark.parametrize("preset", group_options("search"))
def test_every_search_preset_passes_the_check_and_searches_on_validation(preset: str) -> None:
    cfg = check_overrides(["-m", f"search={preset}"])  # its space, its enqueued settings, each job's config
    assert cfg.data.val_size > 0 and cfg.monitor in ("val_acc", "val_loss")
