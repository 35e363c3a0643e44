"""What the optimizer alone costs per training step: `optimizer.step()` of each preset's optimizer
on the preset's model, gradients filled with noise, no forward or backward pass.

    python scripts/optimizer_step.py                                   # fast (SGD) against fast_muon (Muon)
    python scripts/optimizer_step.py --presets fast_muon fast_muon:optimizer.ns_steps=3

A preset is `EXPERIMENT[:OVERRIDE,...]`. The model and optimizer are built as `cifarbench train`
builds them (the config checked as the CLI checks it, channels_last as it says, the YAML's
optimizer), the presets timed in turn over the
repeats so that each sees the same machine. Prints milliseconds per step and what the steps of one
epoch of 50,000 images cost at the preset's batch size, to set against an epoch's time in the run's
log. Not a test: the CPU is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifarbench.data.loader import batch_indices
from cifarbench.models import build_model
from cifarbench.optimizers import build_optimizer
from cifarbench.runtime import cpu_description
from cifarbench.validate import check_overrides


def timed_step(preset: str):
    """(batch size, a function timing `steps` optimizer steps) for EXPERIMENT[:OVERRIDE,...]."""
    experiment, _, overrides = preset.partition(":")
    cfg = check_overrides([f"experiment={experiment}", *filter(None, overrides.split(","))])
    model = build_model(cfg.model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)

    def seconds(steps: int) -> float:
        tic = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        return (time.perf_counter() - tic) / steps

    seconds(3)  # warm-up: optimizer state, first kernels
    return cfg.batch_size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["fast", "fast_muon"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"{cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    steps = {preset: timed_step(preset) for preset in args.presets}
    times: dict[str, list[float]] = {preset: [] for preset in args.presets}
    for _ in range(args.repeats):
        for preset, (_, seconds) in steps.items():
            times[preset].append(seconds(args.steps))
    print("| preset | batch | ms per optimizer step (median) | steps per epoch | optimizer s per epoch |")
    print("|---|---|---|---|---|")
    for preset, (batch_size, _) in steps.items():
        per_step = statistics.median(times[preset])
        per_epoch = len(batch_indices(50_000, batch_size, torch.Generator()))  # the training loader's rule
        print(f"| {preset} | {batch_size} | {per_step * 1000:.1f} | {per_epoch} | {per_step * per_epoch:.2f} |")


if __name__ == "__main__":
    main()
