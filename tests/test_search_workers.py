"""Several search workers sharing one study: a real PostgreSQL server (a throwaway cluster started
here from the Debian `postgresql` package's binaries) and Optuna's journal file, through the CLI.

Where the binaries cannot be had outside CI, the PostgreSQL tests skip and say why; CI (.ci/run)
installs and provides them, and there a missing server fails the tests instead.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from conftest import SMOKE, cli

TINY = [*SMOKE, "data.train_subset=200", "threads=1", "progress=false"]
SEARCH = ["-m", "hydra/sweeper=optuna", "model.dropout=interval(0,0.6)", "hydra/sweeper/pruner=none"]
FAST_LIVENESS = ["hydra.sweeper.heartbeat_seconds=1", "hydra.sweeper.stale_after_seconds=6"]


def postgres_binaries() -> Path | None:
    for candidate in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))]:
        if candidate:
            return Path(candidate).resolve().parent
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of its own in a temporary folder, password auth over TCP; its URL."""
    binaries = postgres_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL's binaries (initdb, pg_ctl): .ci/run installs them")
        pytest.skip("PostgreSQL's binaries (initdb, pg_ctl) are not installed: apt install postgresql")
    base = Path(tempfile.mkdtemp(prefix="cifarbench-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the postgres user
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    (base / "pw").write_text("cb\n")
    os.chmod(base / "pw", 0o644)
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True)

    run(str(binaries / "initdb"), "-D", str(base / "data"), "-U", "cb", f"--pwfile={base / 'pw'}",
        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8")  # fmt: skip
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100"
    run(str(binaries / "pg_ctl"), "-D", str(base / "data"), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        run(str(binaries / "createdb"), "-h", str(base), "-p", str(port), "-U", "cb", "cbstudy")
        yield f"postgresql://cb:cb@127.0.0.1:{port}/cbstudy"
    finally:
        subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def start_worker(cwd: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["cifarbench", "train", *SEARCH, *TINY, *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def the_study(storage: str, name: str) -> optuna.Study:
    from cifarbench.search.study import study_storage

    return optuna.load_study(study_name=name, storage=study_storage(storage, Path(".")))


def check_study_ended_once(storage: str, name: str, sweep_dir: Path, n_trials: int) -> None:
    """Every trial claimed once and finished, n_trials in all, one test read, for the whole study."""
    from cifarbench.search.study import tested_trials, trials

    study = the_study(storage, name)
    counted = trials(study)
    assert [t.number for t in counted] == sorted({t.number for t in counted}) and len(counted) == n_trials
    assert {t.state.name for t in counted} == {"COMPLETE"}
    tested = [
        d for d in sweep_dir.iterdir() if d.name.isdigit() and json.loads((d / "metrics.json").read_text())["test"]
    ]
    assert len(tested_trials(study)) == 1 and [int(d.name) for d in tested] == [tested_trials(study)[0]["trial"]]
    assert sorted(int(d.name) for d in sweep_dir.iterdir() if d.name.isdigit()) == [t.number for t in counted]
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(summary) == n_trials + 1  # every worker's trials in one summary


@pytest.mark.parametrize(("storage_kind", "workers", "n_trials"), [("postgresql", 3, 5), ("journal", 2, 4)])
def test_workers_started_together_share_one_study(
    storage_kind: str, workers: int, n_trials: int, request: pytest.FixtureRequest, tmp_path: Path, run_env: dict
) -> None:
    storage = (
        request.getfixturevalue("postgres") if storage_kind == "postgresql" else f"journal:{tmp_path / 'study.log'}"
    )
    name = f"together-{storage_kind}"
    sweep = tmp_path / "sweep"
    args = ["epochs=1", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}", *FAST_LIVENESS]  # fmt: skip
    started = [start_worker(tmp_path, run_env, *args) for _ in range(workers)]
    outputs = [w.communicate(timeout=600) for w in started]
    assert [w.returncode for w in started] == [0] * workers, [o[1][-2000:] for o in outputs]
    check_study_ended_once(storage, name, sweep, n_trials)
    assert sum("best trial" in out for out, _ in outputs) >= 1  # the worker(s) that saw the last trial end
    # `search finish` from anywhere: the summary again, the test not read a second time
    finished = cli(
        "search", "finish", str(sweep), "--storage", storage, "--study-name", name, cwd=tmp_path, env=run_env
    )
    assert "best trial" in finished.stdout
    check_study_ended_once(storage, name, sweep, n_trials)


def test_a_killed_worker_is_taken_over_and_nothing_is_lost(postgres: str, tmp_path: Path, run_env: dict) -> None:
    name = "killed"
    sweep = tmp_path / "sweep"
    args = ["epochs=3", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={postgres}",
            f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}", *FAST_LIVENESS]  # fmt: skip
    first = start_worker(tmp_path, run_env, *args)
    log = sweep / "0" / "train.log"
    deadline = time.monotonic() + 300
    # history.csv is written after the epoch's checkpoint (its log line comes before): a kill between
    # the two would leave no checkpoint to take over from
    while not (sweep / "0" / "history.csv").is_file():
        assert first.poll() is None and time.monotonic() < deadline, "trial 0 never trained an epoch"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no chance to release its trial: it goes stale
    first.wait(timeout=60)
    other = start_worker(tmp_path, run_env, *args)
    restarted = start_worker(tmp_path, run_env, *args)
    outputs = [w.communicate(timeout=900) for w in (other, restarted)]
    assert [other.returncode, restarted.returncode] == [0, 0], [o[1][-2000:] for o in outputs]
    check_study_ended_once(postgres, name, sweep, 3)
    resumed = log.read_text()
    assert "resumed" in resumed and resumed.count("epoch 1/3") == 1  # taken over from its checkpoint, same number
    assert any("taking over trial 0" in out + err for out, err in outputs)


def test_a_stale_trial_is_taken_over_once_however_the_workers_interleave(tmp_path: Path) -> None:
    """Two workers read the study while a trial is stale; one claims it and beats for it before the
    other claims. The other must not take it too (it would find the run directory in use and fail);
    when the trial goes stale again, under its new worker, it is taken over again, once."""
    from cifarbench.search.workers import HEARTBEAT_ATTR, stale, take_over

    study = optuna.create_study()
    trial_id = study.ask()._trial_id

    def beat(seconds_ago: float, worker: str) -> None:
        study._storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, [time.time() - seconds_ago, worker])

    beat(100, "host:1")  # its worker was killed 100 s ago
    (seen_by_a,), (seen_by_b,) = stale(study, 6), stale(study, 6)
    assert take_over(tmp_path, seen_by_a)
    beat(0, "host:2")  # A beats for it at once
    assert not take_over(tmp_path, seen_by_b) and stale(study, 6) == []
    beat(100, "host:2")  # A is killed in turn
    (again,) = stale(study, 6)
    assert take_over(tmp_path, again) and not take_over(tmp_path, again)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("postgresql://cb:cb@127.0.0.1:{closed}/cbstudy", "cannot open the study's database (OperationalError"),
        ("postgresql://cb:wrong@127.0.0.1:{port}/cbstudy", "password authentication failed"),
        ("journal:{tmp}/no/such/folder/study.log", "the folder"),
    ],
    ids=["unreachable", "bad password", "journal folder missing"],
)
def test_a_storage_that_cannot_be_used_is_one_line_before_any_trial(
    storage: str, message: str, postgres: str, tmp_path: Path, run_env: dict
) -> None:
    url = storage.format(closed=free_port(), port=postgres.rsplit(":", 1)[1].split("/")[0], tmp=tmp_path)
    result = cli("train", *SEARCH, *TINY, "epochs=1", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={url}",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, env=run_env, check=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert "cb:wrong" not in lines[0]  # the password is not printed
    assert not (tmp_path / "sweep").exists()  # no trial started, no sweep directory made


def test_a_missing_database_driver_names_the_extra(tmp_path: Path, run_env: dict) -> None:
    (tmp_path / "blocked" / "psycopg").mkdir(parents=True)
    (tmp_path / "blocked" / "psycopg" / "__init__.py").write_text(
        "raise ModuleNotFoundError('no psycopg', name='psycopg')\n"
    )
    env = {**run_env, "PYTHONPATH": str(tmp_path / "blocked")}
    result = cli("train", *SEARCH, *TINY, "hydra.sweeper.storage=postgresql://cb:cb@127.0.0.1:5/db",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, env=env, check=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "needs the database driver psycopg, which is not installed: pip install 'cifarbench[postgres]'" in lines[0]
