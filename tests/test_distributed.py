"""Data-parallel training: torchrun with 2 CPU processes (gloo) against 1 process, same global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMOKE

# baseline has no batch norm and augmentation=none draws nothing: what differs between 1 and 2
# processes is then only dropout's masks (and float summation order).
RUN = [*SMOKE, "model=baseline", "augmentation=none", "data.train_subset=1000", "data.test_subset=500",
       "epochs=2", "batch_size=64"]  # fmt: skip


def train(cwd: Path, env: dict, processes: int, name: str) -> dict:
    command = ["cifarbench", "train", *RUN, f"name={name}"]
    if processes > 1:
        torchrun = shutil.which("torchrun") or sys.executable
        launcher = [torchrun] if torchrun.endswith("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
        command = [*launcher, "--standalone", f"--nproc_per_node={processes}", "-m", "cifarbench", *command[1:]]
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((cwd / "outputs" / name).rglob("metrics.json"))
    assert len(runs) == 1, runs  # one run directory, written by rank 0 only
    return json.loads(runs[0].read_text())


def test_two_processes_match_one(tmp_path: Path, run_env: dict) -> None:
    one = train(tmp_path, run_env, 1, "ddp1")
    two = train(tmp_path, run_env, 2, "ddp2")
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["data_sizes"] == one["data_sizes"] and two["epochs_run"] == 2
    assert abs(two["test"]["accuracy"] - one["test"]["accuracy"]) <= 4.0, (one["test"], two["test"])
    assert abs(two["train"]["loss"] - one["train"]["loss"]) <= 0.1
    run = next((tmp_path / "outputs" / "ddp2").iterdir())
    for name in ("history.csv", "confusion_matrix.png", "checkpoints/last.pt", "train.log"):
        assert (run / name).is_file()
    assert not list(Path("/tmp").glob("cifarbench-rank1-*/*"))  # the worker left nothing behind
    print(
        f"1 process: {one['test']['accuracy']:.2f}% in {one['total_seconds']:.1f}s; "
        f"2 processes: {two['test']['accuracy']:.2f}% in {two['total_seconds']:.1f}s"
    )


def test_global_batch_must_divide(tmp_path: Path, run_env: dict) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cifarbench",
               "train", *RUN, "batch_size=63", "name=odd"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, **run_env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode != 0
    assert "batch_size=63 is the global batch and must divide evenly over 2 processes" in result.stderr


@pytest.mark.parametrize("flag", ["-m"])
def test_torchrun_refuses_a_sweep(tmp_path: Path, run_env: dict, flag: str) -> None:
    env = {**os.environ, **run_env, "WORLD_SIZE": "2", "RANK": "0"}
    result = subprocess.run(["cifarbench", "train", flag, "epochs=1,2"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "torchrun starts one training" in result.stderr


# --- sweeps beyond one process ---------------------------------------------------------------------

SWEEP = [*(o for o in SMOKE if not o.startswith("batch_size")), "data.train_subset=100", "epochs=1"]


@pytest.mark.parametrize(
    ("launcher", "options"),
    [("joblib", ["hydra.launcher.n_jobs=2"]), ("submitit_local", ["hydra.launcher.timeout_min=10"])],
)
def test_launcher_sweep_writes_its_summary(tmp_path: Path, run_env: dict, launcher: str, options: list[str]) -> None:
    result = subprocess.run(
        ["cifarbench", "train", "-m", *SWEEP, f"name={launcher}", f"hydra/launcher={launcher}", *options,
         "batch_size=32,64"],
        cwd=tmp_path, env={**os.environ, **run_env}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / launcher).iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("job,batch_size,status,test_acc")
    assert [line.split(",")[:3] for line in summary[1:]] == [["0", "32", "completed"], ["1", "64", "completed"]]
    if launcher == "joblib":  # 2 jobs on this machine's cores: each gets cores // 2 threads
        threads = max(1, (os.cpu_count() or 1) // 2)
        assert f"torch threads: {threads}" in (sweep / "0" / "train.log").read_text()


def test_slurm_preset_composes(tmp_path: Path) -> None:
    result = subprocess.run(["cifarbench", "train", "--cfg", "hydra", "hydra/launcher=slurm"], cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for line in ("gpus_per_node: 1", "timeout_min: 240", "array_parallelism: 16", "max_num_timeout: 3"):
        assert line in result.stdout


def test_missing_launcher_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "block" / "hydra_plugins" / "hydra_joblib_launcher"
    blocker.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    (blocker.parent / "__init__.py").write_text("")
    (blocker / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    result = subprocess.run(["cifarbench", "train", "-m", "hydra/launcher=joblib", "epochs=1,2"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'cifarbench[joblib]'" in result.stderr


def test_a_requeued_sweep_job_resumes_from_its_last_checkpoint(tmp_path: Path, run_env: dict) -> None:
    """What a cluster does after preemption: the same job runs again in the same directory."""
    sweep_dir = tmp_path / "sweep"
    command = ["cifarbench", "train", "-m", *SWEEP, "data.train_subset=500", "epochs=3", "name=requeue",
               f"hydra.sweep.dir={sweep_dir}", "seed=0"]  # fmt: skip
    env = {**os.environ, **run_env}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = sweep_dir / "0" / "history.csv"
    deadline = time.monotonic() + 300
    while not history.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()  # preempted: no chance to clean up
    first.wait()
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert done_before < 3

    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed"] is True and metrics["epochs_run"] == 3
    assert f"resumed {sweep_dir / '0'} after epoch {done_before}" in (sweep_dir / "0" / "train.log").read_text()


def test_two_process_run_resumes_to_the_same_numbers(tmp_path: Path, run_env: dict) -> None:
    """SIGTERM to torchrun, then `torchrun ... resume=RUN`: the same numbers as an uninterrupted run."""
    # a narrow kerascnn: batch norm (each rank's own statistics) is what matters here, not the width
    run = [*SMOKE, "model=kerascnn", "model.widths=[8,16,32]", "model.dense=32", "data.train_subset=500", "epochs=3",
           "batch_size=64", "deterministic=true"]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cifarbench"]
    env = {**os.environ, **run_env, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, "train", *run, "name=full"], cwd=tmp_path, env=env, check=True, capture_output=True)
    cut = subprocess.Popen([*launcher, "train", *run, "name=cut"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "outputs" / "cut").rglob("history.csv")):
        assert cut.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    cut.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    cut.wait(timeout=300)
    (run_dir,) = (tmp_path / "outputs" / "cut").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] in ("interrupted", "completed")
    subprocess.run([*launcher, "train", f"resume={run_dir}", "progress=false"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)  # fmt: skip
    (full_dir,) = (tmp_path / "outputs" / "full").iterdir()
    full, resumed = (json.loads((d / "metrics.json").read_text()) for d in (full_dir, run_dir))
    for key in ("train", "val", "test", "epochs_run", "best_epoch"):
        assert resumed[key] == full[key], key
    assert resumed["processes"] == 2 and (run_dir / ".hydra").is_dir()  # the run directory survived its workers


def test_every_rank_takes_rank_0s_decisions(tmp_path: Path, run_env: dict) -> None:
    """kerascnn has batch norm, whose statistics are each rank's own: validated separately, the ranks
    would see different losses, and ReduceLROnPlateau or early stopping could decide differently."""
    # a high lr and coarse thresholds, so that both the plateau schedule and early stopping act early
    run = [*SMOKE, "model=kerascnn", "data.train_subset=500", "epochs=12", "batch_size=64", "optimizer.lr=0.01",
           "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.05", "monitor=val_loss",
           "early_stopping.enabled=true", "early_stopping.patience=2", "early_stopping.min_delta=0.05",
           "name=decide"]  # fmt: skip
    spy = Path(__file__).with_name("rank_spy.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(spy), "train",
               *run]  # fmt: skip
    env = {**os.environ, **run_env, "OMP_NUM_THREADS": "1", "RANK_SPY_DIR": str(tmp_path)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import torch

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["stopped"] is not None and len(rank0["history"]) < 12  # early stopping decided
    assert len({row["lr"] for row in rank0["history"]}) > 1  # and the plateau schedule did

    def numbers(history: list[dict]) -> list[dict]:  # each rank measures its own seconds
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]

    assert numbers(rank1["history"]) == numbers(rank0["history"]) and rank1["stopped"] == rank0["stopped"]
    assert rank0["weights"].keys() == rank1["weights"].keys()
    for name, tensor in rank0["weights"].items():
        assert torch.equal(tensor, rank1["weights"][name]), name


def test_every_rank_trains_in_the_precision_rank_0_chose(tmp_path: Path, run_env: dict) -> None:
    """Only rank 0 runs precision=auto's probe (here made to answer bf16); the other rank must train in
    its choice, not in a default of its own, and the record says so."""
    spy = Path(__file__).with_name("rank_spy.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(spy), "train",
               *SMOKE, "epochs=1", "name=mixed"]  # fmt: skip
    env = {**os.environ, **run_env, "OMP_NUM_THREADS": "1", "RANK_SPY_DIR": str(tmp_path), "RANK_SPY_PRECISION": "bf16"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import torch

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [rank["precision"] for rank in ranks] == ["bf16", "bf16"]
    (run_dir,) = (tmp_path / "outputs" / "mixed").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["precision_choice"]["how"] == "measured"


def test_an_interrupted_grid_sweep_resumes_without_rerunning_finished_jobs(tmp_path: Path, run_env: dict) -> None:
    """The same -m command with the same hydra.sweep.dir: finished jobs are kept as they are, the
    interrupted one continues from its last.pt."""
    sweep_dir = tmp_path / "grid"
    command = ["cifarbench", "train", "-m", *SWEEP, "data.train_subset=500", "epochs=3", "name=grid",
               f"hydra.sweep.dir={sweep_dir}", "seed=0,1"]  # fmt: skip
    env = {**os.environ, **run_env}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (sweep_dir / "1" / "history.csv").exists():  # job 0 done, job 1 past its first epoch
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    first.wait()
    finished = (sweep_dir / "0" / "metrics.json").read_text()
    done_before = len((sweep_dir / "1" / "history.csv").read_text().strip().splitlines()) - 1
    assert json.loads(finished)["status"] == "completed" and done_before < 3

    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    assert (sweep_dir / "0" / "metrics.json").read_text() == finished  # not trained again
    assert (
        "finished in an earlier run of this sweep, with this config: skipped"
        in (sweep_dir / "0" / "train.log").read_text()
    )
    resumed = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed"] is True and resumed["epochs_run"] == 3
    rows = (sweep_dir / "summary.csv").read_text().splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["completed", "completed"]

    changed = [*command[:-1], "seed=0", "epochs=2"]  # another config into the same directory: refused
    result = subprocess.run(changed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "holds a job of another config" in result.stderr
    assert (sweep_dir / "0" / "metrics.json").read_text() == finished  # its results are not overwritten


def test_a_sweep_resumes_after_its_preset_notes_changed_but_not_after_a_trained_setting_did(tmp_path: Path) -> None:
    """Between two runs of a sweep into one hydra.sweep.dir the preset's notes may change (a git
    pull): the job is the same training and resumes; a setting it trains with changed is refused."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cifarbench.config import config_dir, register_resolvers
    from cifarbench.train_job import SweepDirTaken, finished_before

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        now = compose("config", overrides=["experiment=r004_table2", "model.dropout=0.4"])
    saved = now.copy()
    saved.reported.note = "the note as it was when the job started"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert finished_before(tmp_path, now) is None  # unfinished, the same training: resumed, not refused
    saved.model.dropout = 0.3
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(SweepDirTaken, match="holds a job of another config"):
        finished_before(tmp_path, now)
