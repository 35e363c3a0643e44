"""Training throughput of cifarbench's step against the common way, side by side in one process.

    python scripts/benchmark.py                         # baseline, improved, resnet18 at batch 128
    python scripts/benchmark.py --models improved --steps 20 --repeats 5 --out bench.json

For each model, the same model, batch size, optimizer and data are trained two ways:
- cifarbench: the product's own loader and step (data.Batches, train.TrainingStep): uint8 images
  in memory, per-image flip+crop on the batch, normalisation in one multiply-add, channels_last,
  `precision=auto` (what `cifarbench train` runs);
- reference: the common way - a torchvision-style dataset of PIL images with RandomCrop,
  RandomHorizontalFlip, ToTensor and Normalize, a DataLoader with workers, fp32, NCHW.
Images per second are measured after warm-up steps, over several repeats; the median is reported.
The data path alone (augmented, normalised images per second, no model) is measured both ways too.
For each model it also prints the floating-point work of a training step per image and the GFLOP/s
each side reaches, as a share of this machine's peak in that side's precision (a large matrix
product): the table then says how much is left to win, and what ratio is possible at all.
It needs the data cache (`cifarbench data import ...`, or $CIFARBENCH_DATA). Not a test: timings
depend on the machine, which the JSON records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cifarbench.augmentation import BatchMix, FlipCrop
from cifarbench.config import config_dir
from cifarbench.data import Batches, Normalize, Split, load_cifar10
from cifarbench.data.normalize import MEAN_STD
from cifarbench.models import build_model
from cifarbench.runtime import cpu_description, select_precision
from cifarbench.schedulers import Schedule
from cifarbench.train import TrainingStep


class PILCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images_hwc, labels, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loader(images_hwc, labels, batch_size: int, workers: int) -> DataLoader:
    mean, std = MEAN_STD["cifar10"]
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return DataLoader(
        PILCifar(images_hwc, labels, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
    )


def cifarbench_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator:
    """The product's own loader (data.Batches) with flip+crop, as `cifarbench train` builds it."""
    normalize = Normalize("cifar10", images.device, channels_last=True)
    shuffle, draws = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    batches = Batches(
        split=Split(images, labels),
        batch_size=batch_size,
        augmentation=FlipCrop(),
        normalize=normalize,
        shuffle=shuffle,
        augment_generator=draws,
    )
    return forever(batches)


def cifarbench_step(
    model: torch.nn.Module, batches: Iterator, precision, optimizer: torch.optim.Optimizer | None = None
) -> Callable[[], int]:
    """The product's own training step (train.TrainingStep) on its loader's batches; by default with
    the reference's optimizer (plain SGD with momentum), so that the two sides differ only in the step."""
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = TrainingStep(
        forward=model,
        optimizer=optimizer,
        schedule=Schedule(scheduler=None, interval="step"),
        scaler=precision.grad_scaler(),
        precision=precision,
        batch_mix=BatchMix(),
        label_smoothing=0.0,
        grad_clip=None,
    )
    model.train()

    def one_step() -> int:
        inputs, labels = next(batches)
        step(inputs, labels)
        return len(labels)

    return one_step


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def images_per_second(step: Callable[[], int], warmup: int, steps: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        tic = time.perf_counter()
        seen = sum(step() for _ in range(steps))
        rates.append(seen / (time.perf_counter() - tic))
    return rates


def reference_step(model: torch.nn.Module, batches: Iterator, precision, channels_last: bool) -> Callable[[], int]:
    """The common way's training step: plain PyTorch, as a tutorial writes it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> int:
        inputs, labels = next(batches)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            loss = F.cross_entropy(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(labels)

    return step


def train_flops_per_image(model: torch.nn.Module) -> float:
    """Floating-point operations of one forward+backward per image, counted by torch."""
    batch = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        model(batch).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def matmul_peak_gflops(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    """GFLOP/s of a large square matrix product in `dtype`: about the most dense math this machine
    does. A training step cannot beat it, so a model's GFLOP/s against it says how much is left."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    def product() -> int:
        torch.mm(a, b)
        return 1

    return 2 * n**3 * statistics.median(images_per_second(product, 2, 5, repeats)) / 1e9


def model_for(name: str, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["baseline", "improved", "resnet18"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the reference DataLoader's workers")
    parser.add_argument("--images", type=int, default=10_000, help="training images held in memory")
    parser.add_argument("--data-batch-size", type=int, default=512, help="batch of the data-path measurement")
    parser.add_argument("--data-root", default=os.environ.get("CIFARBENCH_DATA", "data"))
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"))
    parser.add_argument("--compile", action="store_true", help="also measure cifarbench with compile=true")
    args = parser.parse_args()
    if args.images < max(args.batch_size, args.data_batch_size):
        # only whole batches are timed: fewer images than a batch would never yield one
        parser.error(
            f"--images {args.images} is smaller than a batch; it must be at least "
            f"--batch-size ({args.batch_size}) and --data-batch-size ({args.data_batch_size})"
        )

    train = load_cifar10(OmegaConf.create({"root": args.data_root, "source": None, "download": False}))["train"]
    images = train.images[: args.images].clone()
    labels = train.labels[: args.images].clone()
    images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    device = torch.device("cpu")
    ours_precision = select_precision("auto", device)
    fp32 = select_precision("fp32", device)
    results: dict = {
        "machine": {
            "cpu": cpu_description(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cifarbench_precision": ours_precision.name,
        },
        "batch_size": args.batch_size,
        "models": {},
    }
    print(f"{cpu_description()}; torch {torch.__version__}; cifarbench precision={ours_precision.name}")

    def median(rates: list[float]) -> float:
        return round(statistics.median(rates), 1)

    # The data path alone: augmented, normalised batches per second.
    ours = cifarbench_batches(images, labels, args.data_batch_size)
    data_ours = images_per_second(lambda: len(next(ours)[1]), 3, 20, args.repeats)
    reference = forever(reference_loader(images_hwc, labels.numpy(), args.data_batch_size, args.workers))
    data_ref = images_per_second(lambda: len(next(reference)[1]), 3, 10, args.repeats)
    results["data_path"] = {
        "cifarbench": median(data_ours),
        "reference": median(data_ref),
        "ratio": round(median(data_ours) / median(data_ref), 2),
    }

    for name in args.models:
        ours_step = cifarbench_step(
            model_for(name, True), cifarbench_batches(images, labels, args.batch_size), ours_precision
        )
        ours_rates = images_per_second(ours_step, args.warmup, args.steps, args.repeats)
        compiled_rates = None
        if args.compile:
            compiled = torch.compile(model_for(name, True))
            compiled_step = cifarbench_step(
                compiled, cifarbench_batches(images, labels, args.batch_size), ours_precision
            )
            compiled_rates = images_per_second(compiled_step, args.warmup, args.steps, args.repeats)
        loader = reference_loader(images_hwc, labels.numpy(), args.batch_size, args.workers)
        ref_step = reference_step(model_for(name, False), forever(loader), fp32, channels_last=False)
        ref_rates = images_per_second(ref_step, args.warmup, args.steps, args.repeats)
        gflop = train_flops_per_image(model_for(name, True)) / 1e9
        results["models"][name] = {
            "cifarbench": median(ours_rates),
            "reference": median(ref_rates),
            "ratio": round(median(ours_rates) / median(ref_rates), 2),
            "train_gflop_per_image": round(gflop, 4),
            "cifarbench_gflops": round(gflop * median(ours_rates), 1),
            "reference_gflops": round(gflop * median(ref_rates), 1),
            "cifarbench_runs": [round(r, 1) for r in ours_rates],
            "reference_runs": [round(r, 1) for r in ref_rates],
        }
        if compiled_rates:
            results["models"][name]["cifarbench_compile"] = median(compiled_rates)
        del loader

    peaks = {
        name: matmul_peak_gflops(dtype, args.repeats)
        for name, dtype in (("cifarbench", ours_precision.dtype or torch.float32), ("reference", torch.float32))
    }
    results["matmul_peak_gflops"] = {name: round(peak, 1) for name, peak in peaks.items()}
    for row in results["models"].values():
        # a cifarbench step at 100% of its peak against the reference as measured: no ratio beats it
        row["ratio_bound"] = round(peaks["cifarbench"] / row["reference_gflops"], 2)

    print(f"\ntraining step, batch {args.batch_size}: images/s (median of {args.repeats} x {args.steps} steps)")
    print(
        f"{'model':<12} {'cifarbench':>11} {'reference':>10} {'ratio':>6}  {'compile=true':>12}  "
        f"{'GFLOP/img':>9}  {'GFLOP/s (of peak): cifarbench':>29}  {'reference':>14}  {'max ratio':>9}"
    )
    for name, row in results["models"].items():
        compiled = f"{row['cifarbench_compile']:>12.1f}" if "cifarbench_compile" in row else f"{'-':>12}"
        ours_use = f"{row['cifarbench_gflops']:.1f} ({row['cifarbench_gflops'] / peaks['cifarbench']:.0%})"
        ref_use = f"{row['reference_gflops']:.1f} ({row['reference_gflops'] / peaks['reference']:.0%})"
        print(
            f"{name:<12} {row['cifarbench']:>11.1f} {row['reference']:>10.1f} {row['ratio']:>5.2f}x  {compiled}  "
            f"{row['train_gflop_per_image']:>9.3f}  {ours_use:>29}  {ref_use:>14}  "
            f"{row['ratio_bound']:>8.2f}x"
        )
    data = results["data_path"]
    print(
        f"{'data path':<12} {data['cifarbench']:>11.1f} {data['reference']:>10.1f} {data['ratio']:>5.2f}x"
        "   (augmented + normalised images/s, no model)"
    )
    print(
        f"peak (a 2048x2048 matrix product): {peaks['cifarbench']:.1f} GFLOP/s in {ours_precision.name}, "
        f"{peaks['reference']:.1f} in fp32; max ratio = the cifarbench peak / the reference's GFLOP/s, what a "
        "step at 100% of the peak would reach"
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
