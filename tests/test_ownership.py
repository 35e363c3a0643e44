"""A run directory is owned by one live process: a second run into it is refused naming the first,
a killed run's lock is stale and never blocks its resume, and a directory that holds a run is not
reused by a plain run (resume it, choose another directory, or overwrite=true)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cifarbench import owner
from cifarbench.errors import UserError
from conftest import SMOKE, cli, python

RUN = [*SMOKE, "data.train_subset=2000", "epochs=4", "deterministic=true"]


def start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["cifarbench", "train", *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def status_of(run: Path, cwd: Path, env: dict) -> str:
    listing = cli("runs", str(run), cwd=cwd, env=env).stdout.splitlines()
    assert len(listing) == 2, listing
    return listing[1].split()[4]


@pytest.mark.slow
def test_a_second_run_into_a_directory_in_use_is_refused_and_the_first_keeps_it(tmp_path: Path, run_env: dict) -> None:
    run = tmp_path / "shared"
    first = start([*RUN, "seed=1", f"hydra.run.dir={run}"], tmp_path, run_env)
    wait_for(run / "config.yaml", first)
    assert status_of(run, tmp_path, run_env) == "running"
    second = cli("train", *RUN, "seed=2", f"hydra.run.dir={run}", cwd=tmp_path, env=run_env, check=False)
    line = one_line(second)
    assert f"{run.resolve()} is in use by another cifarbench run (pid {first.pid} on" in line
    assert first.wait(timeout=300) == 0, first.stderr.read()
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["status"] == "completed" and recorded["seed"] == 1  # nothing of the second run in it
    assert "seed=2" not in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_killed_run_reads_interrupted_and_its_stale_lock_does_not_block_the_resume(
    tmp_path: Path, run_env: dict
) -> None:
    run = tmp_path / "killed"
    proc = start([*RUN, f"hydra.run.dir={run}"], tmp_path, run_env)
    wait_for(run / "history.csv", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert status_of(run, tmp_path, run_env) == "interrupted"  # no record, and its owner is gone
    plain = one_line(cli("train", *RUN, f"hydra.run.dir={run}", cwd=tmp_path, env=run_env, check=False))
    assert f"holds an interrupted run; continue it with cifarbench train resume={run}" in plain
    cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env)
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_finished_run_is_not_replaced_unless_asked(tmp_path: Path, run_env: dict) -> None:
    run = tmp_path / "done"
    cli("train", *RUN, "epochs=1", "seed=1", f"hydra.run.dir={run}", cwd=tmp_path, env=run_env)
    before = (run / "metrics.json").read_text()
    refused = one_line(cli("train", *RUN, "epochs=1", "seed=2", f"hydra.run.dir={run}", cwd=tmp_path,
                           env=run_env, check=False))  # fmt: skip
    assert "holds a completed run; give this run another hydra.run.dir, or add overwrite=true" in refused
    assert (run / "metrics.json").read_text() == before
    cli("train", *RUN, "epochs=1", "seed=2", "overwrite=true", f"hydra.run.dir={run}", cwd=tmp_path, env=run_env)
    assert json.loads((run / "metrics.json").read_text())["seed"] == 2
    assert "seed=1" not in (run / ".hydra" / "overrides.yaml").read_text()


def test_a_lock_file_naming_a_live_pid_that_holds_no_lock_is_stale(tmp_path: Path) -> None:
    """A reused pid: the file names a live process (this one), but nothing holds the lock."""
    run = tmp_path / "reused"
    run.mkdir()
    (run / owner.LOCK_FILE).write_text(
        json.dumps({"pid": os.getppid(), "host": "here", "started": "-", "command": "-"})
    )
    assert owner.state(run) == "free"
    owner.claim(run)
    assert owner.state(run) == "held" and json.loads((run / owner.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_directory_held_by_another_process_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "held"
    holder = subprocess.Popen(
        [python(), "-c", f"from cifarbench import owner; from pathlib import Path; owner.claim(Path({str(run)!r})); "
         "print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert owner.state(run) == "held"
        with pytest.raises(UserError, match=rf"is in use by another cifarbench run \(pid {holder.pid} on "):
            owner.claim(run)
    finally:
        holder.communicate("\n", timeout=30)
    assert owner.state(run) == "free"  # its owner ended
