"""Shared fixtures: the real CIFAR-10 copy in ../shared/data, imported once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from cifarbench.data.cache import cache_path
from cifarbench.train_job import threads_per_job

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# A smoke run: tiny class-balanced subsets of the real data, CPU, no bars.
SMOKE = [
    "device=cpu",
    "progress=false",
    "data.train_subset=300",
    "data.val_size=100",
    "data.test_subset=200",
    "batch_size=64",
]


def cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(["cifarbench", *args], cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"cifarbench {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session", autouse=True)
def precision_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs started by the tests keep their precision timings (precision.cache_dir) out of the
    user's ~/.cache: one cache for the session's runs, in its temporary folder."""
    folder = tmp_path_factory.mktemp("precision-cache")
    os.environ["CIFARBENCH_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def threads_per_worker() -> None:
    """pytest-xdist workers share the cores: each worker's runs (its own process and the cifarbench
    processes it starts) get the threads cifarbench gives each of joblib's parallel sweep jobs; with
    torch's default (every core each) they oversubscribe the CPU (docs/performance.md)."""
    threads = threads_per_job(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real data at {SHARED_ARCHIVE}")
        pytest.skip(f"real CIFAR-10 archive not found at {SHARED_ARCHIVE} (the shared folder beside the checkout)")
    return SHARED_ARCHIVE


@pytest.fixture(scope="session")
def data_root(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared archive imported through the real CLI into a data root that every pytest-xdist
    worker of the session shares: the first to get the lock imports (180 MB, 11 s here), the others
    find the cache, which the import writes atomically."""
    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_dir = session_dir.parent  # the workers' common base directory
    root = session_dir / "data"
    with FileLock(session_dir / "data.lock"):
        if not cache_path(root).is_file():
            root.mkdir(exist_ok=True)
            cli("data", "import", str(shared_archive), "--root", str(root), cwd=root)
    return root


@pytest.fixture
def run_env(data_root: Path) -> dict:
    return {"CIFARBENCH_DATA": str(data_root)}


def python() -> str:
    return sys.executable
