"""A full disk loses nothing: every write that fails on it says which file and how much space is left
in one line, leaves no temporary file, keeps the last good checkpoint, records the run as
interrupted (reason: disk full) where that still fits, and the run resumes once there is space.

Each of cifarbench's writes is failed in turn by a fake ENOSPC at the moment its temporary file
would replace the real one; one run fills a real 30 MB filesystem through the CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cifarbench import files, train
from cifarbench.cli import main
from cifarbench.config import config_dir
from cifarbench.errors import OutOfSpace
from cifarbench.state import load_checkpoint
from conftest import SMOKE, cli

TINY = [*SMOKE, "data.train_subset=200", "epochs=2", "deterministic=true", "name=full"]
# every file a run writes after its config: checkpoints and history each epoch, then the final files
RUN_FILES = [
    "last.pt",
    "best.pt",
    "history.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "classification_report.txt",
    "samples.png",
    "curves.png",
    "metrics.json",
]


def fail_writes_to(monkeypatch: pytest.MonkeyPatch, name: str, times: int = 1) -> list[Path]:
    """The next `times` writes of a file called `name` fail with ENOSPC after their temporary file was
    written, as on a disk that fills up mid-write; returns the files it refused."""
    real_replace, refused = os.replace, []

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == name and len(refused) < times:
            refused.append(Path(dst))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    return refused


def tiny_config(data_root: Path):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"data.root={data_root}"])


@pytest.fixture(scope="module")
def whole_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole")
    train.fit(tiny_config(data_root), run_dir)
    return run_dir


@pytest.fixture
def uninterrupted(whole_run: Path) -> dict:
    return json.loads((whole_run / "metrics.json").read_text())


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_full_disk_at_any_write_of_a_run_loses_nothing_and_resumes(
    name: str, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict
) -> None:
    cfg = tiny_config(data_root)
    refused = fail_writes_to(monkeypatch, name)
    with pytest.raises(OutOfSpace, match=rf"disk full: could not write .*{name} \(.* free on its filesystem\)"):
        train.fit(cfg, tmp_path)
    assert refused and not list(tmp_path.rglob("*.tmp"))  # its own temporary file removed
    last = tmp_path / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)["epoch"] if last.is_file() else 0  # intact: it loads
    if name != "metrics.json":  # the record itself fits: it says what happened and how to go on
        recorded = json.loads((tmp_path / "metrics.json").read_text())
        assert recorded["status"] == "interrupted" and recorded["reason"] == "disk full"
        assert recorded["epochs_run"] == saved
        if saved:
            assert recorded["resume"] == f"cifarbench train resume={tmp_path}"
    monkeypatch.undo()  # space is freed
    resumed = train.fit(cfg, tmp_path, resume=load_checkpoint(last) if saved else None)
    assert resumed["status"] == "completed"
    assert resumed["test"] == uninterrupted["test"] and resumed["val"] == uninterrupted["val"]


def test_a_full_disk_when_writing_a_report_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    runs = Path(__file__).resolve().parents[1] / "docs" / "runs"
    fail_writes_to(monkeypatch, "report.html")
    assert main(["report", str(runs), "--out", str(tmp_path)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk full: could not write" in lines[0] and "report.html" in lines[0], lines
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "report.html").exists()


def test_a_full_disk_when_importing_data_keeps_the_cache_it_had(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from cifarbench.data.cache import cache_path

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    before = cache_path(root).stat().st_mtime_ns
    fail_writes_to(monkeypatch, cache_path(root).name)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
    assert main(["data", "import", str(shared), "--root", str(root)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk full: could not write" in lines[0], lines
    assert cache_path(root).stat().st_mtime_ns == before and not list(root.rglob("*.tmp"))


def test_a_full_disk_when_writing_predictions_is_one_line(
    whole_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    image = Path(__file__).resolve().parents[1] / "docs" / "confusion_matrix.png"
    fail_writes_to(monkeypatch, "predictions.csv")
    assert main(["predict", str(whole_run), str(image), "--output", str(tmp_path / "predictions.csv")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "predictions.csv" in lines[0], lines
    assert not list(tmp_path.iterdir())


def small_filesystem(path: Path, megabytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True)


@pytest.mark.slow
def test_a_run_that_fills_a_real_filesystem_resumes_once_there_is_space(tmp_path: Path, run_env: dict) -> None:
    """30 MB hold the first epoch's checkpoints (17 + 4 MB) but not the second's last.pt beside them."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must mount the small filesystem")
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    try:
        small_filesystem(disk, 30)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this machine cannot mount a tmpfs ({exc})")
    try:
        run = disk / "run"
        args = ["train", *TINY, "epochs=3", "data.train_subset=1000", f"hydra.run.dir={run}"]
        result = cli(*args, cwd=tmp_path, env=run_env, check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
        assert f"could not write {run}/checkpoints/last.pt" in lines[0] and "free on its filesystem" in lines[0]
        assert f"resume with: cifarbench train resume={run}" in lines[0]
        assert not list(disk.rglob("*.tmp"))
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
        listed = cli("runs", str(disk), cwd=tmp_path, env=run_env).stdout
        assert "interrupted" in listed
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)  # space is freed
        cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env)
        recorded = json.loads((run / "metrics.json").read_text())
        assert recorded["status"] == "completed" and recorded["epochs_run"] == 3 and recorded["resumed"] is True
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_when_writing_a_sweeps_summary_is_one_line_and_keeps_the_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from omegaconf import OmegaConf

    from cifarbench.sweep import SweepSummary

    recorded = Path(__file__).resolve().parents[1] / "docs" / "runs" / "r004_table2" / "2026-12-02_20-27-50"  # 4 jobs
    sweep = tmp_path / "sweep"
    shutil.copytree(recorded, sweep)
    jobs = {p: p.read_bytes() for p in sweep.rglob("metrics.json")}
    fail_writes_to(monkeypatch, "summary.md")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {"_target_": "BasicSweeper"}}})
    with pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(config)
    assert exited.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "sweep summary not written: disk full: could not write" in lines[0], lines
    assert not list(sweep.rglob("*.tmp")) and {p: p.read_bytes() for p in jobs} == jobs
