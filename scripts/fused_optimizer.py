"""Torch's fused optimizer step against its per-tensor loop, inside cifarbench's training step.

    python scripts/fused_optimizer.py                                  # the reports' Adam recipes at batch 32/64
    python scripts/fused_optimizer.py --runs student:32 improved:128 --optimizer sgd

Each model is trained with the product's loader and step (data.Batches, train.TrainingStep,
`precision=auto`) and the optimizer its YAML builds (conf/optimizer/*, `fused: true`), then again
with `optimizer.fused=false` (torch's default on the CPU: one small kernel per parameter tensor),
alternating the two over the repeats so that both see the same machine. Prints images per second,
the ratio, and what an epoch of 50,000 images takes each way. Not a test: the CPU is printed.
It needs the data cache (`cifarbench data import ...`, or $CIFARBENCH_DATA).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from benchmark import cifarbench_batches, cifarbench_step, images_per_second, model_for
from cifarbench.config import config_dir
from cifarbench.data import load_cifar10
from cifarbench.optimizers import build_optimizer
from cifarbench.runtime import cpu_description, select_precision


def optimizer_cfg(name: str, fused: bool):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"optimizer={name}", f"optimizer.fused={str(fused).lower()}"])
    return OmegaConf.create(OmegaConf.to_container(cfg.optimizer, resolve=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["student:32", "improved:32", "kerascnn:64"], help="MODEL:BATCH")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--data-root", default=os.environ.get("CIFARBENCH_DATA", "data"))
    args = parser.parse_args()

    train = load_cifar10(OmegaConf.create({"root": args.data_root, "source": None, "download": False}))["train"]
    images, labels = train.images[:5000].clone(), train.labels[:5000].clone()
    precision = select_precision("auto", torch.device("cpu"))
    threads = torch.get_num_threads()
    print(f"{cpu_description()}; torch {torch.__version__}; {threads} threads; precision={precision.name}")
    print("| model | batch | optimizer | fused img/s | per-tensor loop img/s | ratio | epoch fused | epoch loop |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        name, batch_size = run.split(":")
        steps = {}
        for fused in (True, False):
            model = model_for(name, channels_last=True)
            optimizer = build_optimizer(optimizer_cfg(args.optimizer, fused), model)
            steps[fused] = cifarbench_step(
                model, cifarbench_batches(images, labels, int(batch_size)), precision, optimizer
            )
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):  # alternate, so that a change in the machine's load hits both alike
            for fused, one_step in steps.items():
                rates[fused] += images_per_second(one_step, warmup=2, steps=args.steps, repeats=1)
        fused_rate, loop_rate = statistics.median(rates[True]), statistics.median(rates[False])
        print(
            f"| {name} | {batch_size} | {args.optimizer} | {fused_rate:.0f} | {loop_rate:.0f} | "
            f"{fused_rate / loop_rate:.2f} | {50_000 / fused_rate / 60:.1f} min | {50_000 / loop_rate / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()
