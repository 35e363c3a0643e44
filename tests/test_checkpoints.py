"""What a checkpoint holds and who may read it: exact resume (EMA, lookahead, another device), the
weights `evaluate` re-tests, a kill between two checkpoint writes, and files that would run code."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMOKE, cli

# deterministic kernels: an interrupted and resumed run must end with the uninterrupted run's numbers
DETERMINISTIC = [*SMOKE, "data.train_subset=1000", "epochs=4", "deterministic=true"]
EMA_LOOKAHEAD = [*DETERMINISTIC, "ema_decay=0.9", "lookahead_every=3", "name=avg"]
COMPARED = ("train", "val", "test", "epochs_run", "best_epoch", "test_weights_epoch")


def the_run(cwd: Path, name: str) -> Path:
    (path,) = (cwd / "outputs" / name).iterdir()
    return path


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def compared(run: Path) -> dict:
    metrics = metrics_of(run)
    assert metrics["status"] == "completed", metrics
    return {key: metrics[key] for key in COMPARED}


def interrupt_after_first_epoch(args: list[str], cwd: Path, env: dict, name: str) -> Path:
    proc = subprocess.Popen(["cifarbench", "train", *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((cwd / "outputs" / name).rglob("history.csv")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, proc.stderr.read()
    run = the_run(cwd, name)
    assert metrics_of(run)["status"] == "interrupted"
    return run


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """An uninterrupted run with EMA and lookahead."""
    cwd = tmp_path_factory.mktemp("averaged")
    cli("train", *EMA_LOOKAHEAD, cwd=cwd, env={"CIFARBENCH_DATA": str(data_root)})
    return the_run(cwd, "avg")


def test_interrupted_ema_and_lookahead_run_resumes_to_the_same_numbers(
    averaged_run: Path, tmp_path: Path, run_env: dict
) -> None:
    run = interrupt_after_first_epoch(EMA_LOOKAHEAD, tmp_path, run_env, "avg")
    result = cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert compared(run) == compared(averaged_run)
    assert metrics_of(run)["resumed"] is True and metrics_of(run)["ema"] is True


def test_a_failed_resume_keeps_the_interrupted_record(tmp_path: Path, run_env: dict) -> None:
    run = interrupt_after_first_epoch([*DETERMINISTIC, "ema_decay=0.9", "name=kept"], tmp_path, run_env, "kept")
    record = (run / "metrics.json").read_text()
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["optimizer"]["param_groups"].append(state["optimizer"]["param_groups"][0])  # no longer fits the model
    torch.save(state, last)
    result = cli("train", f"resume={run}", cwd=tmp_path, env=run_env, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "does not fit this run and cannot be resumed" in lines[0]
    assert (run / "metrics.json").read_text() == record  # still "interrupted, resume with ..."


def test_an_interrupted_run_recorded_before_the_format_field_resumes(tmp_path: Path, run_env: dict) -> None:
    """Records written before metrics.json carried `format` (format 0) still resume."""
    run = interrupt_after_first_epoch([*DETERMINISTIC, "name=legacy"], tmp_path, run_env, "legacy")
    old = {k: v for k, v in metrics_of(run).items() if k != "format"}  # as the old writer left it
    (run / "metrics.json").write_text(json.dumps(old, indent=2) + "\n")
    result = cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert metrics_of(run)["status"] == "completed" and metrics_of(run)["format"] == 1
    assert metrics_of(run)["resumed"] is True


def test_evaluate_reproduces_an_ema_run_exactly(averaged_run: Path, run_env: dict) -> None:
    out = cli("evaluate", str(averaged_run), cwd=averaged_run, env=run_env).stdout
    recorded = metrics_of(averaged_run)["test"]
    assert f"test accuracy {recorded['accuracy']:.2f}%" in out and "(identical)" in out, out


def test_evaluate_reproduces_a_tta_run_exactly(tmp_path: Path, run_env: dict) -> None:
    cli("train", *SMOKE, "epochs=1", "tta=flip_translate", "name=tta", cwd=tmp_path, env=run_env)
    run = the_run(tmp_path, "tta")
    out = cli("evaluate", str(run), cwd=tmp_path, env=run_env).stdout
    metrics = metrics_of(run)
    assert f"test accuracy {metrics['test']['accuracy']:.2f}%" in out and "(identical)" in out, out
    assert "tta flip_translate" in out


def gpu_saved(last: Path) -> None:
    """Rewrites a CPU run's last.pt as a GPU run would have saved it: the augmentation generator's
    state is a CUDA generator's (16 bytes: seed and offset), and the GPU's own generator is there."""
    state = torch.load(last, weights_only=True)
    state["rng"]["device"] = "cuda"
    for rank in state["rng"]["ranks"]:
        rank["augment"] = torch.zeros(16, dtype=torch.uint8)
        rank["device"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, last)


def test_a_gpu_run_resumes_on_the_cpu_and_says_what_it_reseeded(tmp_path: Path, run_env: dict) -> None:
    run = interrupt_after_first_epoch([*DETERMINISTIC, "name=moved"], tmp_path, run_env, "moved")
    gpu_saved(run / "checkpoints" / "last.pt")
    result = cli("train", f"resume={run}", "device=cpu", "progress=false", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "resume: saved on cuda, resumed on cpu: re-seeded the augmentation generator" in log
    assert metrics_of(run)["status"] == "completed" and metrics_of(run)["epochs_run"] == 4


KILL_AFTER_FIRST_CHECKPOINT_OF_EPOCH_2 = """
import os, sys, torch
saved = []
real_save, real_replace = torch.save, os.replace
def save(obj, f, *args, **kwargs):
    saved.append(obj.get("epoch") if isinstance(obj, dict) else None)
    return real_save(obj, f, *args, **kwargs)
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith(".pt") and saved and saved[-1] == 2:
        os._exit(137)  # as SIGKILL: right after the first checkpoint file of epoch 2
torch.save, os.replace = save, replace
from cifarbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_between_the_two_checkpoint_writes_loses_nothing(tmp_path: Path, run_env: dict) -> None:
    # the kill comes in the last epoch, so the resume has no epoch left whose save would mend best.pt
    args = [*DETERMINISTIC, "epochs=2", "monitor=val_loss"]
    cli("train", *args, "name=whole", cwd=tmp_path, env=run_env)
    whole = the_run(tmp_path, "whole")
    with (whole / "history.csv").open() as fh:
        val_loss = [float(row["val_loss"]) for row in csv.DictReader(fh)]
    assert val_loss[1] < val_loss[0]  # epoch 2 is a new best: both files are written in epoch 2
    env = {**os.environ, **run_env}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_CHECKPOINT_OF_EPOCH_2, "train", *args, "name=cut"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == 137, killed.stderr[-2000:]
    run = the_run(tmp_path, "cut")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] <= last["epoch"]  # best.pt never comes from an epoch that last.pt has not seen

    cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env)
    assert compared(run) == compared(whole)
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == metrics_of(run)["best_epoch"]


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, run_env: dict, command: str) -> None:
    marker = tmp_path / "code-ran"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        torch.save({"model": {}, "config": {}, "format": 2, "payload": RunsCode(marker)}, run / "checkpoints" / name)
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    args = {"evaluate": ["evaluate", str(run)], "predict": ["predict", str(run), str(image)],
            "resume": ["train", f"resume={run}"]}[command]  # fmt: skip
    result = cli(*args, cwd=tmp_path, env=run_env, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "refuses to run code from a file" in lines[0]
    assert not marker.exists()


def test_an_interrupted_muon_run_resumes_to_the_same_numbers(tmp_path: Path, run_env: dict) -> None:
    """optimizer=muon keeps two optimizers' states (torch's Muon on the weights' 2-D views, Adam for
    the rest); with a one-cycle schedule moving both, EMA and lookahead, resume must still be exact.
    A narrow kerascnn (convolutions, batch norm and dense layers, as the wide models): torch's Muon
    orthogonalises in bf16, which a CPU without bf16 units emulates slowly (docs/performance.md)."""
    args = [*DETERMINISTIC, "data.train_subset=500", "epochs=3", "optimizer=muon", "scheduler=onecycle", "name=muon"]
    args += ["ema_decay=0.9", "lookahead_every=3", "model=kerascnn", "model.widths=[8,16,32]", "model.dense=32"]
    whole = tmp_path / "whole"
    whole.mkdir()
    cli("train", *args, cwd=whole, env=run_env)
    run = interrupt_after_first_epoch(args, tmp_path, run_env, "muon")
    result = cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert compared(run) == compared(the_run(whole, "muon"))
    assert metrics_of(run)["ema"] is True and metrics_of(run)["lookahead"]


def test_a_fractional_run_ends_its_schedule_on_its_last_step_and_resumes_exactly(tmp_path: Path, run_env: dict) -> None:
    """epochs=2.5: two whole epochs and half of a third. The step schedule and lookahead span
    exactly the steps trained (the schedule reaches its end, lookahead leaves the slow weights),
    the run reports 2.5 epochs, and an interrupted run resumes to the same numbers."""
    args = [*DETERMINISTIC, "data.train_subset=500", "epochs=2.5", "lookahead_every=3", "scheduler=warmup_linear"]
    args.append("name=part")
    whole = tmp_path / "whole"
    whole.mkdir()
    cli("train", *args, cwd=whole, env=run_env)
    run = the_run(whole, "part")
    batches_per_epoch = math.ceil(500 / 64)  # 8: the last batch is partial
    steps = math.ceil(2.5 * batches_per_epoch)  # 20: the third epoch stops after 4 of its 8 batches
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert {int(p["step"]) for p in state["optimizer"]["state"].values()} == {steps}
    # the triangle ends at end_factor x lr exactly on the last step, not on a whole third epoch's
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.07 * 1e-3)
    # lookahead finished on that step (20 is not a multiple of 3: only the finish pulls there)
    assert state["lookahead"]["steps"] == steps
    assert all(torch.equal(state["model"][k], slow) for k, slow in state["lookahead"]["slow"].items())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    metrics = metrics_of(run)
    assert metrics["epochs_run"] == 2.5
    assert metrics["median_epoch_seconds"] == statistics.median(metrics["epoch_seconds"][:2])  # whole epochs only
    assert "epoch 3/3 (4 of 8 batches)" in (run / "train.log").read_text()

    interrupted = interrupt_after_first_epoch(args, tmp_path, run_env, "part")
    result = cli("train", f"resume={interrupted}", "progress=false", cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert compared(interrupted) == compared(run)
