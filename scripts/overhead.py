"""Where a fast run's time goes besides training, measured phase by phase in one process.

    python scripts/overhead.py                       # experiment=fast, the full test set, 3 repeats
    python scripts/overhead.py --experiment fast_muon --repeats 5 --out overhead.json

A run's overhead is its total time minus its training steps: starting Python and importing, loading
the data, building and initialising the model, validating after epochs, the final test with TTA and
writing the run directory. This script times each of those pieces the way `cifarbench train` runs
them (the same functions, the preset's config, this machine's precision) without training, and
compares the two ways the run has done them: before (validation after every epoch; the final test
in TTA views plus a separate pass without TTA) and now (the preset's `validate_every` - 0 for fast and
fast_muon, whose validation set is the test set: no pass; the figures without TTA from the TTA
pass's own first view). Medians over repeats; the JSON
records the CPU. It needs the data cache (`cifarbench data import ...`, or $CIFARBENCH_DATA).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from cifarbench import artifacts
from cifarbench.config import config_dir, register_resolvers
from cifarbench.data import CLASSES, Normalize, load_cifar10, make_splits
from cifarbench.models import build_model
from cifarbench.runtime import cpu_description, select_precision
from cifarbench.train import evaluate, validated


def seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        action()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={args.experiment}", "device=cpu"])
    device = torch.device("cpu")
    precision = select_precision(cfg.precision, device)
    phases: dict[str, float] = {}

    command = [sys.executable, "-c", "import cifarbench.train_job"]  # what `cifarbench train` imports
    phases["python start and imports"] = seconds(lambda: subprocess.run(command, check=True), args.repeats)

    def load() -> object:
        data = cfg.data
        return make_splits(load_cifar10(data), data.val_size, data.train_subset, data.test_subset, cfg.seed, device)

    phases["load the data and split it"] = seconds(load, args.repeats)
    splits = load()
    normalize = Normalize(cfg.data.normalization, device, cfg.channels_last)

    def build() -> torch.nn.Module:
        model = build_model(cfg.model)
        if hasattr(model, "init_from_data"):
            model.init_from_data(normalize(splits.train.images[:5000]))
        return model.to(memory_format=torch.channels_last) if cfg.channels_last else model

    phases["build and initialise the model"] = seconds(build, args.repeats)
    model = build()

    def validation() -> object:
        return evaluate(model, splits.val, normalize, precision, cfg.eval_batch_size)

    def test_with_tta() -> object:
        return evaluate(model, splits.test, normalize, precision, cfg.eval_batch_size, cfg.tta)

    phases["one validation pass"] = seconds(validation, args.repeats)
    phases["final test, TTA views (now: with the figures without TTA)"] = seconds(test_with_tta, args.repeats)
    result = test_with_tta()

    def write() -> None:
        with tempfile.TemporaryDirectory() as folder:
            history = [{key: 1.0 for key in artifacts.HISTORY_FIELDS} for _ in range(math.ceil(cfg.epochs))]
            metrics = artifacts.run_metrics(history, result, CLASSES, {"status": "completed", "epochs_run": cfg.epochs})
            artifacts.write_run(Path(folder), metrics, result, splits.test.images, CLASSES, history)

    phases["metrics and plots of the run directory"] = seconds(write, args.repeats)

    epochs = math.ceil(cfg.epochs)  # a fractional run's part epoch is validated like a whole one
    startup = ("python start and imports", "load the data and split it", "build and initialise the model")
    fixed = sum(phases[k] for k in startup) + phases["metrics and plots of the run directory"]
    validation_pass = phases["one validation pass"]
    tta_pass = phases["final test, TTA views (now: with the figures without TTA)"]
    before = fixed + epochs * validation_pass + tta_pass + validation_pass  # + a separate pass without TTA
    validations = sum(validated(epoch, epochs, cfg.validate_every) for epoch in range(1, epochs + 1))
    now = fixed + validations * validation_pass + tta_pass
    print(f"{args.experiment}: {cfg.epochs} epochs, tta {cfg.tta}, precision {precision.name}, {cpu_description()}")
    for name, value in phases.items():
        print(f"  {name:<60} {value:7.2f} s")
    print(f"  overhead before (validation every epoch, a separate pass without TTA) {before:7.1f} s")
    now_label = f"overhead now (validate_every: {cfg.validate_every}, {validations} validation passes, one test pass)"
    print(f"  {now_label} {now:7.1f} s")
    print(f"  now / before: {now / before:.2f}")
    if args.out:
        record = {
            "experiment": args.experiment,
            "cpu": cpu_description(),
            "precision": precision.name,
            "torch": torch.__version__,
            "phases_s": phases,
            "before_s": before,
            "now_s": now,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
