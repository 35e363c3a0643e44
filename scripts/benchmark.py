"""Training throughput of cifarbench's step against the common way, side by side in one process.

    python scripts/benchmark.py                         # baseline, improved, resnet18 at batch 128
    python scripts/benchmark.py --models improved --steps 20 --repeats 5 --out bench.json
    python scripts/benchmark.py --models improved fast --profile    # where a step's time goes

For each model, the same model, batch size, optimizer and data are trained two ways:
- cifarbench: the product's own loader and step (data.Batches, train.TrainingStep): uint8 images
  in memory, per-image flip+crop on the batch, normalisation in one multiply-add, channels_last,
  in the precision `precision=auto` chooses for it here (precision.choose: its probe runs first,
  without the cache; what it chose and its timings are printed), and forced to fp32 and to bf16;
- reference: the common way - a torchvision-style dataset of PIL images with RandomCrop,
  RandomHorizontalFlip, ToTensor and Normalize, a DataLoader with workers, fp32, NCHW.
Images per second are measured after warm-up steps, over several repeats interleaved across the
columns (one repeat of each, then the next round); the median is reported.
A precision whose step takes long (emulated bf16 is 10-20x slower) is timed over fewer steps, about
--seconds a repeat, so that the table still comes in minutes.
The data path alone (augmented, normalised images per second, no model) is measured both ways too.
For each model it also prints the floating-point work of a training step per image and the GFLOP/s
each side reaches, as a share of this machine's peak in that side's precision (a large matrix
product): the table then says how much is left to win, and what ratio is possible at all.
With --profile it also runs torch.profiler over cifarbench's steps in the chosen precision and
prints the share of the step's time in each kind of op (convolutions and matrix products, batch
norm, activations, pooling, the optimizer, the data) and the top five ops.
It needs the data cache (`cifarbench data import ...`, or $CIFARBENCH_DATA). Not a test: timings
depend on the machine, which the JSON records.
"""

from __future__ import annotations

import argparse
import json
import math
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
from cifarbench.data import Batches, Normalize, Split, load_data
from cifarbench.data.normalize import MEAN_STD
from cifarbench.models import build_model
from cifarbench.precision import choose
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


def matmul_peak_gflops(dtype: torch.dtype, repeats: int, n: int = 2048) -> tuple[float, int]:
    """GFLOP/s of a large square matrix product in `dtype`: about the most dense math this machine
    does. A training step cannot beat it, so a model's GFLOP/s against it says how much is left.
    Where the product is emulated (bf16 without bf16 units: 60 s for 2048x2048 on a 2-core EPYC) a
    smaller one is timed, the largest that takes under a second. Returns (GFLOP/s, its size)."""
    size = 256
    while size < n:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        tic = time.perf_counter()
        torch.mm(a, b)
        if 8 * (time.perf_counter() - tic) > 1.0:  # twice the size is eight times the work
            break
        size *= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)

    def product() -> int:
        torch.mm(a, b)
        return 1

    return 2 * size**3 * statistics.median(images_per_second(product, 1, 3, repeats)) / 1e9, size


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# torch.profiler op names -> what they are, for the step's time shares (first match wins)
OP_KINDS = (
    ("convolution and matmul", ("conv", "mm", "addmm", "matmul", "linear", "bmm", "mkldnn_")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("activation", ("relu", "gelu", "silu", "threshold", "hardtanh", "elu")),
    ("pooling", ("pool",)),
    ("optimizer", ("_foreach", "sgd", "adam", "lerp", "addcdiv", "addcmul")),
    ("data (augmentation, normalisation)", ("index", "gather", "flip", "where", "roll", "pad", "randint", "rand")),
)


def op_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in OP_KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other (copies, adds, loss, casts)"


def profile_step(step: Callable[[], int], warmup: int, steps: int) -> dict:
    """Self CPU time of each op over `steps` training steps: shares by kind and the top five ops."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = [(event.key, event.self_cpu_time_total) for event in prof.key_averages() if event.self_cpu_time_total > 0]
    total = sum(t for _, t in ops)
    kinds: dict[str, float] = {}
    for name, t in ops:
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + t / total
    top = sorted(ops, key=lambda op: -op[1])[:5]
    return {
        "kinds": {kind: round(share, 3) for kind, share in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": name, "share": round(t / total, 3)} for name, t in top],
        "steps": steps,
    }


def print_profile(name: str, precision: str, profile: dict) -> None:
    print(f"\n{name} ({precision}), torch.profiler over {profile['steps']} steps, self CPU time:")
    for kind, share in profile["kinds"].items():
        print(f"  {share:6.1%}  {kind}")
    print("  top ops: " + ", ".join(f"{op['op']} {op['share']:.1%}" for op in profile["top_ops"]))


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
    parser.add_argument("--seconds", type=float, default=10.0, help="a slow step is timed over about this long")
    parser.add_argument("--profile", action="store_true", help="also profile cifarbench's step (torch.profiler)")
    args = parser.parse_args()
    if args.images < max(args.batch_size, args.data_batch_size):
        # only whole batches are timed: fewer images than a batch would never yield one
        parser.error(
            f"--images {args.images} is smaller than a batch; it must be at least "
            f"--batch-size ({args.batch_size}) and --data-batch-size ({args.data_batch_size})"
        )

    data_cfg = {"name": "cifar10", "root": args.data_root, "source": None, "download": False}
    train = load_data(OmegaConf.create(data_cfg)).splits["train"]
    images = train.images[: args.images].clone()
    labels = train.labels[: args.images].clone()
    images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    device = torch.device("cpu")
    steps_per_epoch = 45_000 // args.batch_size  # a full training set, as the probe's budget sees it
    results: dict = {
        "machine": {"cpu": cpu_description(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "batch_size": args.batch_size,
        "models": {},
    }
    print(f"{cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads")

    def median(rates: list[float]) -> float:
        return round(statistics.median(rates), 1)

    def rates_of(steps: dict[str, Callable[[], int]]) -> dict[str, list[float]]:
        """images/s of each step over `--repeats`, the repeats interleaved (one of each, then the next
        round) so that drift on a shared machine hits every column alike; a slow step (emulated bf16)
        over fewer steps, about --seconds a repeat."""
        counts = {}
        for column, step in steps.items():
            tic = time.perf_counter()
            for _ in range(args.warmup):
                step()
            seconds_per_step = (time.perf_counter() - tic) / max(args.warmup, 1)
            counts[column] = max(2, min(args.steps, math.ceil(args.seconds / max(seconds_per_step, 1e-9))))
        rates: dict[str, list[float]] = {column: [] for column in steps}
        for _ in range(args.repeats):
            for column, step in steps.items():
                rates[column] += images_per_second(step, 0, counts[column], 1)
        return rates

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

    fp32 = select_precision("fp32", device)
    for name in args.models:
        inputs, targets = next(cifarbench_batches(images, labels, args.batch_size))
        choice = choose("auto", device, model_for(name, True), inputs, targets, steps_per_epoch, None)
        print(f"{name}: precision=auto chose {choice.describe()}")
        steps = {}
        for column, precision in (("cifarbench", choice.name), ("fp32", "fp32"), ("bf16", "bf16")):
            batches = cifarbench_batches(images, labels, args.batch_size)
            steps[column] = cifarbench_step(model_for(name, True), batches, select_precision(precision, device))
        if args.compile:
            compiled = torch.compile(model_for(name, True))
            batches = cifarbench_batches(images, labels, args.batch_size)
            steps["compile"] = cifarbench_step(compiled, batches, select_precision(choice.name, device))
        loader = reference_loader(images_hwc, labels.numpy(), args.batch_size, args.workers)
        steps["reference"] = reference_step(model_for(name, False), forever(loader), fp32, channels_last=False)
        rates = rates_of(steps)
        del loader, steps
        gflop = train_flops_per_image(model_for(name, True)) / 1e9
        forced_best = max(median(rates["fp32"]), median(rates["bf16"]))
        results["models"][name] = {
            "precision": choice.name,
            "precision_choice": choice.record(),
            "cifarbench": median(rates["cifarbench"]),
            "fp32": median(rates["fp32"]),
            "bf16": median(rates["bf16"]),
            "auto_vs_faster_forced": round(median(rates["cifarbench"]) / forced_best, 3),
            "reference": median(rates["reference"]),
            "ratio": round(median(rates["cifarbench"]) / median(rates["reference"]), 2),
            "train_gflop_per_image": round(gflop, 4),
            "cifarbench_gflops": round(gflop * median(rates["cifarbench"]), 1),
            "reference_gflops": round(gflop * median(rates["reference"]), 1),
            "runs": {column: [round(r, 1) for r in values] for column, values in rates.items()},
        }
        if args.compile:
            results["models"][name]["cifarbench_compile"] = median(rates["compile"])
        if args.profile:
            batches = cifarbench_batches(images, labels, args.batch_size)
            step = cifarbench_step(model_for(name, True), batches, select_precision(choice.name, device))
            results["models"][name]["profile"] = profile_step(step, args.warmup, args.steps)

    measured = {name: matmul_peak_gflops(dtype, args.repeats) for name, dtype in PEAK_DTYPES.items()}
    peaks = {name: peak for name, (peak, _) in measured.items()}
    sizes = {name: size for name, (_, size) in measured.items()}
    results["matmul_peak_gflops"] = {name: round(peak, 1) for name, peak in peaks.items()}
    results["matmul_peak_size"] = sizes
    for row in results["models"].values():
        row["cifarbench_peak_share"] = round(row["cifarbench_gflops"] / peaks[row["precision"]], 3)
        # a cifarbench step at 100% of its precision's peak against the reference as measured: no ratio beats it
        row["ratio_bound"] = round(peaks[row["precision"]] / row["reference_gflops"], 2)

    print(f"\ntraining step, batch {args.batch_size}: images/s (median of {args.repeats} repeats)")
    print(
        f"{'model':<10} {'auto':>5} {'cifarbench':>10} {'fp32':>8} {'bf16':>8} {'auto/best':>9} {'reference':>9} "
        f"{'ratio':>6} {'compile':>8} {'GFLOP/img':>9}  {'GFLOP/s (of peak): cifarbench':>29} {'reference':>14} "
        f"{'max ratio':>9}"
    )
    for name, row in results["models"].items():
        compiled = f"{row['cifarbench_compile']:>8.1f}" if "cifarbench_compile" in row else f"{'-':>8}"
        ours_use = f"{row['cifarbench_gflops']:.1f} ({row['cifarbench_peak_share']:.0%})"
        ref_use = f"{row['reference_gflops']:.1f} ({row['reference_gflops'] / peaks['fp32']:.0%})"
        print(
            f"{name:<10} {row['precision']:>5} {row['cifarbench']:>10.1f} {row['fp32']:>8.1f} {row['bf16']:>8.1f} "
            f"{row['auto_vs_faster_forced']:>9.3f} {row['reference']:>9.1f} {row['ratio']:>5.2f}x {compiled} "
            f"{row['train_gflop_per_image']:>9.3f}  {ours_use:>29} {ref_use:>14} {row['ratio_bound']:>8.2f}x"
        )
    data = results["data_path"]
    print(
        f"{'data path':<10} {'':>5} {data['cifarbench']:>10.1f} {'':>8} {'':>8} {'':>9} {data['reference']:>9.1f} "
        f"{data['ratio']:>5.2f}x   (augmented + normalised images/s, no model)"
    )
    print(
        f"peak (a square matrix product): {peaks['fp32']:.1f} GFLOP/s in fp32 ({sizes['fp32']}), "
        f"{peaks['bf16']:.1f} in bf16 ({sizes['bf16']}); "
        "auto/best = cifarbench's auto against the faster forced precision; max ratio = the chosen precision's "
        "peak / the reference's GFLOP/s, what a step at 100% of that peak would reach"
    )
    for name, row in results["models"].items():
        if "profile" in row:
            print_profile(name, row["precision"], row["profile"])
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
