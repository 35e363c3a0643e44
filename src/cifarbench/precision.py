"""`precision=auto`: which precision a run trains in, decided once per run and recorded.

On the CPU the choice between fp32 and bf16 is timed, not read off the CPU's flags: bf16 units that
torch reports can still be slower than fp32 (a Xeon with AVX512-BF16 ran `improved` 15-30% slower
in bf16, issue 32), and without such units bf16 is emulated and 10-20x slower. The probe (`probe`)
times forward and backward in each precision, interleaved, median of 3 after a warm-up, first on the
model's heaviest layer and a few images, where bf16 more than 2x slower is out; otherwise it is timed
again on the whole model at the run's batch, within a budget of 5% of one epoch. bf16 is taken only
when it is more than 5% faster. A decision is cached per CPU, torch, model and batch in the user's
cache folder (`cache_dir`), so the next run of that kind pays nothing; `precision_cache=false`
measures anew. An epoch under 20 steps is too short to pay for a probe: fp32.

On CUDA the GPU's compute capability decides (bf16 from Ampere on, fp16 with a grad scaler before).
`precision=fp32|bf16|fp16` forces. Whatever decided, the decision is the run's: it goes into every
checkpoint and the run record, and resume, evaluate, predict and a search's best-trial test use it
(`recorded_precision`), never a new probe, so that numbers repeat.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.errors import one_line
from cifarbench.files import write_json
from cifarbench.options import PRECISIONS
from cifarbench.runtime import Precision, cpu_bf16_units, cpu_name, cuda_has_native_bf16, select_precision

log = logging.getLogger("cifarbench")

BF16_MARGIN = 1.05  # bf16 must take under 1/1.05 of fp32's time; within 5%, fp32 (exact, the reference)
BUDGET = 0.05  # the probe's share of one epoch at most (an epoch estimated from the probe's own timings)
ROUNDS = 3  # timed steps per precision after one warm-up each; the median decides
MIN_STEPS = 20  # an epoch of fewer steps cannot hide even the first, cheapest timing
FEW_IMAGES = 16  # the first timing: the heaviest layer on this many images (an eighth of smaller batches)
DECISIVE_GAP = 2.0  # bf16 this many times slower than fp32 on the first timing is out
CACHE_FORMAT = 1
NAMES = PRECISIONS[1:]  # every one but "auto"


@dataclass(frozen=True)
class Choice:
    """The run's precision and how it was decided: what the run record (record.py) and every checkpoint hold."""

    name: str  # fp32 | bf16 | fp16
    how: str  # forced, gpu, measured, cached, too short, probe failed; recorded (resumed), rank 0's (DDP)
    detail: dict[str, Any] = field(default_factory=dict)  # the probe's timings, the cache entry, a reason

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "how": self.how, **self.detail}

    def describe(self) -> str:
        """One log line: 'bf16 (measured on the model: fp32 412 ms, bf16 301 ms a step)'."""
        times = self.detail.get("median_ms")
        timed = f": fp32 {times['fp32']:.0f} ms, bf16 {times['bf16']:.0f} ms a step" if times else ""
        unit = f" on {self.detail['unit']}" if "unit" in self.detail else ""
        reason = f"; {self.detail['reason']}" if "reason" in self.detail else ""
        return f"{self.name} ({self.how}{unit}{timed}{reason})"


def choose(
    asked: str,
    device: torch.device,
    model: nn.Module | None,
    inputs: torch.Tensor | None,
    labels: torch.Tensor | None,
    steps_per_epoch: int,
    cache_key: dict[str, Any] | None,
) -> Choice:
    """The precision a new run trains in. `inputs`/`labels` are one training batch as the step sees
    it (normalised, in the run's memory format) and `steps_per_epoch` bounds the probe; `cache_key`
    names what decides the choice (see `key_fields`), None to measure without the cache."""
    if asked != "auto":
        return Choice(select_precision(asked, device).name, "forced")
    if device.type == "cuda":
        return Choice(legacy_auto(device), "gpu", {"reason": "bf16 units from compute capability 8.0 on, else fp16"})
    if device.type != "cpu":
        return Choice("fp32", "forced", {"reason": f"autocast on {device.type} is not probed"})
    if model is None or steps_per_epoch < MIN_STEPS:
        reason = f"an epoch of {steps_per_epoch} steps is too short to pay for a probe (needs {MIN_STEPS})"
        return Choice("fp32", "too short", {"reason": reason})
    with cached(cache_key) as entry:
        if entry.get("choice"):
            measured = {k: v for k, v in entry["choice"].items() if k != "name"}
            return Choice(entry["choice"]["name"], "cached", {**measured, "cache": str(cache_file())})
        try:
            choice = probe(model, inputs, labels, steps_per_epoch)
        except Exception as exc:  # a model that fails on a batch is refused next, by preflight, in one line
            return Choice("fp32", "probe failed", {"reason": one_line(exc)})
        if choice.how == "measured":  # a probe cut short says nothing worth keeping
            entry["choice"] = {"name": choice.name, **choice.detail}
        return choice


def resumed_choice(checkpoint: dict[str, Any], device: torch.device) -> Choice | None:
    """A resumed run's precision: the one its checkpoint records, with how it was first decided.
    None when the run was decided for another kind of device (a CPU run resumed on a GPU) and must
    be decided anew here."""
    recorded = dict(checkpoint.get("precision") or {})
    if not _same_device(recorded, device):
        return None
    name = recorded_precision(checkpoint, device).name
    first = recorded.pop("decided", None) or recorded.pop("how", None)
    recorded.pop("how", None)
    recorded.pop("name", None)
    return Choice(name, "recorded", {**recorded, "decided": first or LEGACY})


def recorded_precision(checkpoint: dict[str, Any], device: torch.device, recorded_name: str | None = None) -> Precision:
    """The precision a trained run ran in, for resuming, re-evaluating or predicting with it: its
    checkpoint's record (`recorded_name`, the run record's, for checkpoints from before the
    record existed); with neither, what `precision=auto` meant then (bf16 on CPUs with bf16 units).
    A run decided for another kind of device is read in fp32 on the CPU (the exact reference), in
    what `auto` gives a GPU there."""
    recorded = checkpoint.get("precision") or {}
    name = recorded.get("name") or recorded_name
    if not _same_device(recorded, device):
        name = "fp32" if device.type == "cpu" else legacy_auto(device)
    if name is None:
        asked = checkpoint["config"].get("precision", "auto")
        name = asked if asked != "auto" else legacy_auto(device)
    if name == "fp16" and device.type == "cpu":  # a GPU run read on a CPU: fp16 autocast is GPU-only
        name = "fp32"
    return select_precision(name, device)


LEGACY = "auto, before precision was recorded (decided by the CPU's flags)"


def _same_device(recorded: dict[str, Any], device: torch.device) -> bool:
    """Whether a recorded choice holds on `device`: forced ones always, measured ones where made."""
    return recorded.get("how") == "forced" or recorded.get("device", device.type) == device.type


def legacy_auto(device: torch.device) -> str:
    """`precision=auto` by the device's flags: still the rule on CUDA; on the CPU the rule before issue
    32, for runs recorded without a choice."""
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_units() else "fp32"


# --- the probe


def probe(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps_per_epoch: int) -> Choice:
    """Times a copy of `model` (its batch-norm statistics and the run's random streams untouched),
    cheapest unit first: its heaviest layer on a few images. bf16 more than 2x slower there is out
    (emulated bf16 runs 10-20x slower than fp32; no batch size closes that gap); a closer race, or
    bf16 ahead, is run again on the model itself at the run's batch, or on the layer at that batch,
    whichever the budget (5% of an epoch, estimated from the first fp32 step) allows. A timing the
    budget cannot finish ends the probe in fp32."""
    started = time.perf_counter()
    model = copy.deepcopy(model).train()
    batch = len(inputs)
    with torch.random.fork_rng(devices=[]):
        layer = heaviest_layer(model, inputs[:2])
        share = layer.share
        few = min(FEW_IMAGES, max(2, batch // 8))
        what = f"its heaviest layer ({layer.name}, {share:.0%} of the model's FLOPs)"
        first = layer_timer(layer, few)
        warm_fp32 = first("fp32")
        model_step = warm_fp32 * batch / few / share  # the model's fp32 step, estimated (a warm-up: over)
        budget = BUDGET * steps_per_epoch * model_step
        times = timed(first, started, budget, {"fp32": warm_fp32})
        if times is None:
            reason = f"timing even its heaviest layer on {few} images would cost over {BUDGET:.0%} of an epoch"
            return Choice("fp32", "too short", {"reason": reason, "probe_seconds": round(_since(started), 3)})
        unit = f"{what} on {few} images"
        ratio = median(times["bf16"]) / median(times["fp32"])
        if ratio <= DECISIVE_GAP:
            for candidate, cost, make in (
                ("the model", model_step, lambda: model_timer(model, inputs, labels)),
                (f"{what} on {batch} images", model_step * share, lambda: layer_timer(layer, batch)),
            ):
                if _since(started) + (ROUNDS + 1) * cost * (1 + ratio) <= budget:
                    again = timed(make(), started, budget)
                    if again is not None:
                        unit, times = candidate, again
                    break
    return decide(times, unit, _since(started))


def _since(started: float) -> float:
    return time.perf_counter() - started


def timed(
    step: Callable[[str], float], started: float, budget: float, warm: dict[str, float] | None = None
) -> dict[str, list[float]] | None:
    """One warm-up step in each precision (oneDNN builds its kernels on first use; `warm` names the
    ones already taken), then ROUNDS timed ones each, interleaved and alternating in order so that
    drift hits both alike. None when the next step would take the probe past `budget` seconds
    since `started` (each step's cost guessed from its precision's last one)."""
    last = dict(warm or {})
    for name in ("fp32", "bf16"):
        if name not in last:
            last[name] = step(name)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(ROUNDS):
        for name in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            if _since(started) + last[name] > budget:
                return None
            last[name] = step(name)
            times[name].append(last[name])
    return times


def decide(times: dict[str, list[float]], unit: str, seconds: float) -> Choice:
    """bf16 when its median step is more than 5% faster than fp32's; else fp32."""
    medians = {name: median(values) for name, values in times.items()}
    name = "bf16" if medians["bf16"] * BF16_MARGIN < medians["fp32"] else "fp32"
    return Choice(
        name,
        "measured",
        {
            "unit": unit,
            "median_ms": {k: round(1000 * v, 2) for k, v in medians.items()},
            "times_ms": {k: [round(1000 * t, 2) for t in v] for k, v in times.items()},
            "probe_seconds": round(seconds, 3),
        },
    )


def model_timer(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[str], float]:
    """Seconds of one forward and backward of the model on the batch, in a given precision."""

    def step(name: str) -> float:
        precision = select_precision(name, inputs.device)
        tic = time.perf_counter()
        with precision.autocast():
            logits = model(inputs)
        F.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - tic

    return step


@dataclass
class Layer:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # one input's, without the batch
    memory_format: torch.memory_format
    share: float  # of the forward FLOPs of every convolution and linear layer of the model


def heaviest_layer(model: nn.Module, sample: torch.Tensor) -> Layer:
    """The convolution or linear layer with the most forward FLOPs, found on a forward of a small
    `sample` (no gradients)."""
    found: list[tuple[float, str, nn.Module, torch.Tensor]] = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            fan_in = (
                module.in_channels // module.groups * module.weight[0, 0].numel()
                if isinstance(module, nn.Conv2d)
                else module.in_features
            )
            found.append((2.0 * output.numel() * fan_in, name, module, args[0]))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not found:
        raise ValueError("no convolution or linear layer to time")
    flops, name, module, x = max(found, key=lambda entry: entry[0])
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    return Layer(name, module, tuple(x.shape[1:]), fmt, flops / sum(entry[0] for entry in found))


def layer_timer(layer: Layer, batch: int) -> Callable[[str], float]:
    """Seconds of one forward and backward of the layer alone (with its input's gradient, as inside
    a network) on `batch` random inputs in the run's memory format, in a given precision."""
    module = layer.module  # of the probe's own copy of the model
    shape = (batch, *layer.input_shape)
    device = next(module.parameters()).device
    x = torch.randn(shape, device=device)
    if len(shape) == 4:
        x = x.contiguous(memory_format=layer.memory_format)
    x.requires_grad_(True)

    def step(name: str) -> float:
        precision = select_precision(name, device)
        tic = time.perf_counter()
        with precision.autocast():
            out = module(x)
        out.float().mean().backward()
        module.zero_grad(set_to_none=True)
        x.grad = None
        return time.perf_counter() - tic

    return step


# --- the cache


def cache_dir() -> Path:
    """$CIFARBENCH_CACHE_DIR, else $XDG_CACHE_HOME/cifarbench, else ~/.cache/cifarbench."""
    if os.environ.get("CIFARBENCH_CACHE_DIR"):
        return Path(os.environ["CIFARBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarbench"


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def key_fields(
    model_config: dict[str, Any],
    batch_size: int,
    input_shape: tuple[int, ...],
    channels_last: bool,
    compiled: bool = False,
) -> dict[str, Any]:
    """What decides the choice: the CPU (model name, bf16 units, cores, torch's threads), torch's
    version, the model's config, the per-process batch, the input's size and memory format, and
    whether the run compiles its step (the probe times the eager model either way)."""
    return {
        "cpu": cpu_name(),
        "bf16_units": cpu_bf16_units(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": model_config,
        "batch_size": batch_size,
        "input": list(input_shape),
        "channels_last": channels_last,
        "compile": compiled,
    }


@contextlib.contextmanager
def cached(key: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """The cache entry for `key`, under a lock of that key's own held until the block ends (so that
    concurrent runs of a sweep that ask the same question probe one at a time, the later ones
    finding the first one's answer, while other questions go on); what the block puts in it is
    written back under a short lock of the whole file. With no key, or a cache folder that cannot
    be written or locked, an entry that is forgotten."""
    if key is None:
        yield {}
        return
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    held = contextlib.ExitStack()
    try:
        held.enter_context(_locked(f"precision-{digest}.lock"))
    except _CacheUnusable as exc:
        log.warning("precision cache %s cannot be used (%s); measuring without it", cache_dir(), exc)
        yield {}
        return
    with held:
        entry = _valid(read_cache().get(digest))
        before = dict(entry)
        yield entry
        if entry != before:
            entry.update(key=key, written=datetime.now().isoformat(timespec="seconds"))
            try:
                with _locked("precision.lock"):  # read again: another key may have been written meanwhile
                    entries = read_cache()
                    entries[digest] = entry
                    write_json(cache_file(), {"format": CACHE_FORMAT, "entries": entries})
            except (_CacheUnusable, OSError) as exc:
                log.warning("precision cache %s not written (%s)", cache_file(), exc)


class _CacheUnusable(Exception):
    pass


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir() / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _CacheUnusable(exc.strerror or str(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks (some network mounts)
            raise _CacheUnusable(f"no file locks: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)  # releases the flock


def _valid(entry: Any) -> dict[str, Any]:
    """A cache entry as choose reads it, or an empty one (re-measured) if it is not."""
    if not isinstance(entry, dict) or not isinstance(entry.get("choice"), dict):
        return {}
    return dict(entry) if entry["choice"].get("name") in ("fp32", "bf16") else {}


def read_cache() -> dict[str, Any]:
    """The cache's entries; an unreadable or foreign file reads as empty (it is rewritten)."""
    try:
        data = json.loads(cache_file().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("precision cache %s unreadable (%s); starting it anew", cache_file(), exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]
