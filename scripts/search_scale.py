"""Wall time of one fixed search with 1 and with N workers sharing its study, side by side.

    python scripts/search_scale.py --workers 1 2 --trials 8 --repeats 2

Each measurement is a fresh study (a journal file, or --storage URL with a fresh study name) in a
temporary folder: N `cifarbench train -m hydra/sweeper=optuna ...` processes started together, each
with one torch thread, until the last exits; the study must then hold exactly --trials completed
trials. Worker counts alternate within each repeat, so that a drift of the machine touches all.
It needs the data cache ($CIFARBENCH_DATA). Not a test: timings belong to the machine they ran on,
printed with its CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import optuna

from cifarbench.runtime import cpu_description
from cifarbench.search.study import study_storage, trials

TRIAL = [
    "model=baseline", "epochs=2", "batch_size=64", "data.train_subset=2000", "data.val_size=500",
    "data.test_subset=1000", "device=cpu", "progress=false", "threads=1", "hydra/sweeper/pruner=none",
    "model.dropout=interval(0,0.6)", "optimizer.lr=tag(log,interval(1e-4,1e-2))",
]  # fmt: skip


def one_study(workers: int, n_trials: int, storage: str | None, name: str) -> float:
    """Seconds from starting `workers` processes on a new study until the last one exits."""
    with tempfile.TemporaryDirectory(prefix="search-scale-") as folder:
        sweep = Path(folder) / "sweep"
        url = storage or f"journal:{Path(folder) / 'study.log'}"
        command = ["cifarbench", "train", "-m", "hydra/sweeper=optuna", *TRIAL, f"hydra.sweeper.n_trials={n_trials}",
                   f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}",
                   f"hydra.sweep.dir={sweep}"]  # fmt: skip
        start = time.perf_counter()
        processes = [
            subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(workers)
        ]
        errors = [p.communicate()[1] for p in processes]
        seconds = time.perf_counter() - start
        if any(p.returncode for p in processes):
            raise SystemExit(f"a worker failed:\n{errors[0][-2000:]}")
        study = optuna.load_study(study_name=name, storage=study_storage(url, sweep))
        states = [t.state.name for t in trials(study)]
        if states != ["COMPLETE"] * n_trials:
            raise SystemExit(f"the study ended with {states}, not {n_trials} completed trials")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--storage", help="a database URL (default: a journal file per study)")
    parser.add_argument("--out", type=Path, default=Path("search_scale.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{cpu_description()}; {os.cpu_count()} cores; {args.trials} trials a study; one torch thread a worker")
    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    for repeat in range(args.repeats):
        order = args.workers if repeat % 2 == 0 else list(reversed(args.workers))
        for workers in order:
            took = one_study(workers, args.trials, args.storage, f"scale-{repeat}-{workers}-{time.time_ns()}")
            seconds[workers].append(took)
            print(f"repeat {repeat + 1}: {workers} worker(s): {took:.1f} s")
    base = statistics.median(seconds[args.workers[0]])
    header = f"wall seconds (median of {args.repeats}) | each repeat | trials a minute | against {args.workers[0]}"
    print(f"\n| workers | {header} |")
    print("| --- | --- | --- | --- | --- |")
    for workers, values in seconds.items():
        median = statistics.median(values)
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {workers} | {median:.1f} | {each} | {60 * args.trials / median:.2f} | {base / median:.2f}x |")
    args.out.write_text(json.dumps({"cpu": cpu_description(), "trials": args.trials, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
