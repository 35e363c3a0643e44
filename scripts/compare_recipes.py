"""Two or more recipes side by side: each preset trained with the same seeds, one run after another in
one process tree, then a table of accuracy and time per seed, their means, and the ratio of training
times.

    python scripts/compare_recipes.py --experiments fast fast_muon --seeds 0 1 2 --out /root/compare
    python scripts/compare_recipes.py --experiments fast fast_muon --seeds 0 1 2 --out /root/compare --table-only

Runs go to OUT/<preset>/<date>_<time> (`cifarbench train experiment=P seed=S output_root=OUT`); a run
that already completed for a (preset, seed) is kept and not trained again, so an interrupted
comparison continues where it stopped. Speeds only compare within one invocation on one machine,
alone on it: the table names the CPU. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from cifarbench.report import markdown_table
from cifarbench.runs import Run, find_runs


def completed_run(out: Path, preset: str, seed: int) -> Run | None:
    runs = [r for r in find_runs([out / preset]) if r.status == "completed" and r.config.get("seed") == seed]
    return runs[-1] if runs else None


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} (sd {sd:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="output_root of the runs (outside the work tree)")
    parser.add_argument("--table-only", action="store_true", help="train nothing; tabulate what completed")
    args = parser.parse_args()

    for preset in args.experiments:
        for seed in args.seeds:
            if args.table_only or completed_run(args.out, preset, seed) is not None:
                continue
            command = ["cifarbench", "train", f"experiment={preset}", f"seed={seed}", f"output_root={args.out}"]
            subprocess.run([*command, "progress=false"], check=True)

    rows, training = [], {}
    for preset in args.experiments:
        runs = [run for seed in args.seeds if (run := completed_run(args.out, preset, seed)) is not None]
        for run in runs:
            m = run.metrics
            without = (m.get("test_without_tta") or {}).get("accuracy")
            rows.append(
                [
                    preset,
                    run.config["seed"],
                    m["epochs_run"],
                    f"{m['test']['accuracy']:.2f}",
                    "-" if without is None else f"{without:.2f}",
                    f"{m['train_seconds'] / 60:.1f}",
                    f"{m['total_seconds'] / 60:.1f}",
                    f"{(m['total_seconds'] - m['train_seconds']) / 60:.2f}",
                ]
            )
        training[preset] = [run.metrics["train_seconds"] / 60 for run in runs]
        rows.append(
            [
                f"**{preset} mean**",
                f"n={len(runs)}",
                "",
                mean_sd([run.metrics["test"]["accuracy"] for run in runs]),
                mean_sd([w["accuracy"] for run in runs if (w := run.metrics.get("test_without_tta"))]),
                mean_sd(training[preset]),
                mean_sd([run.metrics["total_seconds"] / 60 for run in runs]),
                mean_sd([(run.metrics["total_seconds"] - run.metrics["train_seconds"]) / 60 for run in runs]),
            ]
        )
    headers = ["preset", "seed", "epochs", "test acc (TTA) %", "without TTA %", "training min", "whole run min"]
    headers.append("overhead min")
    hardware = {run.hardware for preset in args.experiments for run in find_runs([args.out / preset])}
    print(f"Hardware: {'; '.join(sorted(h for h in hardware if h))}\n")
    print(markdown_table(headers, rows))
    first, *others = [p for p in args.experiments if training.get(p)]
    for other in others:
        ratio = statistics.mean(training[other]) / statistics.mean(training[first])
        print(f"training time {other} / {first}: {ratio:.2f}")


if __name__ == "__main__":
    main()
