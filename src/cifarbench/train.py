"""The training loop: one loop for every model, read top to bottom.

    data (uint8 splits on the device) -> model -> train_one_epoch / evaluate per epoch -> artifacts

`fit` is the whole run; `train_one_epoch` and `evaluate` are the two halves of an epoch.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from cifarbench import artifacts, distributed
from cifarbench.augmentation import Augmentation, BatchMix, tta_views
from cifarbench.config import instantiate
from cifarbench.data import CLASSES, DataSplits, Normalize, Split, load_cifar10, make_splits
from cifarbench.distributed import SINGLE_PROCESS, World, all_reduce_sum, any_rank
from cifarbench.errors import Diverged, Interrupted, TrainingStopped, UserError
from cifarbench.interrupt import StopRequest
from cifarbench.loggers import NoLogger
from cifarbench.models import build_model, count_parameters
from cifarbench.optimizers import Lookahead, build_optimizer
from cifarbench.runtime import Precision, configure_backends, select_device, select_precision, versions
from cifarbench.schedulers import Schedule, build_schedule
from cifarbench.state import Generators, TrainingState, weights_to_test
from cifarbench.stopping import BestTracker

log = logging.getLogger("cifarbench")
DIVERGED_HINT = "lower optimizer.lr or set grad_clip"


@dataclass
class EvalResult:
    loss: float
    accuracy: float  # percent
    predictions: torch.Tensor  # (N,) on the CPU
    labels: torch.Tensor  # (N,) on the CPU
    probabilities: torch.Tensor  # (N, classes) on the CPU


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled (generator given) or ordered index batches; a trailing batch of one is dropped
    because batch norm cannot train on a single image."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if generator is not None and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


@dataclass
class Step:
    """What one optimisation step needs; built once per run by `fit`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    precision: Precision
    augment: Augmentation
    normalize: Normalize
    batch_mix: BatchMix
    label_smoothing: float
    grad_clip: float | None
    ema: AveragedModel | None
    lookahead: Lookahead | None = None


def train_one_epoch(
    step: Step,
    train: Split,
    batch_size: int,
    shuffle: torch.Generator,
    augment: torch.Generator,
    progress: bool,
    stop: StopRequest | None = None,
    world: World = SINGLE_PROCESS,
    epoch: int = 1,
) -> tuple[float, float]:
    """One pass over the shuffled training split (epoch `epoch`, counted from 1); returns
    (mean loss, accuracy %).

    `batch_size` is the global batch: with several processes each takes its slice of every batch
    (`shuffle` is the same on every rank, `augment` is each rank's own). Raises Diverged on a
    NaN/infinite loss and Interrupted when `stop` was signalled; either way the partial epoch is
    dropped and the last checkpoint (the previous epoch's) stays the good one.
    """
    model = step.model
    device = train.labels.device
    # A finiteness check reads the loss: free on the CPU, a sync per step on a GPU, so sparser there.
    check_every = 1 if device.type == "cpu" else 50
    model.train()
    # Loss and hits stay on the device; reading them every batch would force a sync per step.
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device, dtype=torch.int64)
    seen = torch.zeros((), device=device, dtype=torch.int64)
    batches = [b for b in batch_indices(len(train), batch_size, shuffle) if len(b) >= world.size]
    bar = tqdm(batches, desc="train", leave=False, disable=not progress or not world.is_main)
    for i, global_idx in enumerate(bar):
        idx = global_idx.tensor_split(world.size)[world.rank].to(device, non_blocking=True)
        inputs = step.normalize(step.augment(train.images[idx], augment, idx, epoch))
        labels = train.labels[idx]
        targets = labels
        if step.batch_mix.enabled:
            inputs, targets = step.batch_mix(inputs, labels)  # soft targets
        with step.precision.autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=step.label_smoothing)
        if i % check_every == 0 and any_rank(not torch.isfinite(loss).item(), device, world):
            raise Diverged(f"the training loss became {loss.item()} at batch {i + 1}; {DIVERGED_HINT}")
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        if step.grad_clip:
            step.scaler.unscale_(step.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.schedule.after_batch()
        if step.lookahead is not None:
            step.lookahead.after_batch()
        if step.ema is not None:
            step.ema.update_parameters(model)
        loss_sum += loss.detach() * len(idx)
        hits += (logits.argmax(1) == labels).sum()
        seen += len(idx)
        if progress and i % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen.item():.3f}", acc=f"{100 * hits.item() / seen.item():.1f}")
        # With several ranks asking "did anyone get a signal?" is a collective: not every step.
        polled = not world.enabled or i % check_every == 0
        if stop is not None and polled and any_rank(stop.signal_number is not None, device, world):
            number = stop.signal_number or signal.SIGTERM  # a rank that got no signal stops with the others
            raise Interrupted(f"{signal.Signals(number).name} received", number)
    totals = all_reduce_sum(torch.stack([loss_sum, hits.double(), seen.double()]).double(), world)
    loss_total, hits_total, seen_total = totals.tolist()
    if not math.isfinite(loss_total):
        raise Diverged(f"the training loss became {loss_total}; {DIVERGED_HINT}")
    return loss_total / seen_total, 100.0 * hits_total / seen_total


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, normalize: Normalize, precision: Precision, batch_size: int, tta: str = "none"
) -> EvalResult:
    """Loss, accuracy and predictions on `split`; `tta` averages the logits over flipped and
    translated views (augmentation.tta_views)."""
    model.eval()
    losses, probabilities = [], []
    for idx in batch_indices(len(split), batch_size, None):
        idx = idx.to(split.labels.device)
        logits = 0.0
        for weight, view in tta_views(split.images[idx], tta):
            with precision.autocast():
                logits = logits + weight * model(normalize(view)).float()
        losses.append(F.cross_entropy(logits, split.labels[idx], reduction="sum"))
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities).cpu()
    labels = split.labels.cpu()
    predictions = probs.argmax(1)
    accuracy = 100.0 * (predictions == labels).double().mean().item()
    return EvalResult(torch.stack(losses).sum().item() / len(split), accuracy, predictions, labels, probs)


def fit(cfg: DictConfig, run_dir: Path, resume: dict | None = None) -> dict:
    """Train `cfg` and write its run directory; returns metrics.json's content.

    `resume` is a last.pt checkpoint of this run: training continues after its epoch with every
    state restored (see state.TrainingState).
    """
    started = datetime.now()
    world, device, precision = set_up_runtime(cfg)
    splits = load_splits(cfg, device)
    normalize = Normalize(cfg.data.normalization, device, cfg.channels_last)
    model, forward = build_network(cfg, splits, normalize, device, world)
    state, step = build_training(cfg, model, forward, splits, normalize, precision, device, world)
    if resume is not None:
        restore(state, resume, run_dir)
    logger = instantiate(cfg.logger)(run_dir=run_dir, config=state.config) if world.is_main else NoLogger(run_dir, {})

    stop_reason = run_epochs(cfg, state, step, splits, run_dir, world, logger)

    tested = final_test(cfg, state, step, splits)
    metrics = artifacts.run_metrics(
        history=state.history,
        test=tested.result,
        classes=CLASSES,
        extra={
            "status": "completed",
            "stopped_early": stop_reason,
            "monitor": cfg.monitor,
            "best_epoch": state.tracker.best_epoch,
            "test_weights": cfg.test_weights,
            "test_weights_epoch": tested.epoch,
            "ema": bool(cfg.ema_decay),
            "lookahead": bool(cfg.lookahead_every),
            "tta": cfg.tta,
            "test_without_tta": tested.without_tta,
            "val_is_test": splits.val_is_test,
            "data_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "params": dict(zip(("total", "trainable"), count_parameters(model), strict=True)),
            "device": str(device),
            "precision": precision.name,
            "channels_last": bool(cfg.channels_last),
            "deterministic": bool(cfg.deterministic),
            "processes": world.size,
            "resumed": resume is not None,
            "seed": cfg.seed,
            "started_at": started.isoformat(timespec="seconds"),
            "total_seconds": (datetime.now() - started).total_seconds(),
            "versions": versions(),
        },
    )
    if world.is_main:
        artifacts.write_run(run_dir, metrics, tested.result, splits.test.images.cpu(), CLASSES, state.history)
        logger.finish(metrics)
    return metrics


def set_up_runtime(cfg: DictConfig) -> tuple[World, torch.device, Precision]:
    """Seed, determinism, process group, device, precision and the device's backend flags."""
    torch.manual_seed(cfg.seed)  # model initialisation, and the global draws of dropout and mixup
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    world, rank_device = distributed.init(cfg.device)  # one process unless launched by torchrun
    device = rank_device or select_device(cfg.device)
    configure_backends(device, cfg.deterministic)
    precision = select_precision(cfg.precision, device)
    if not world.is_main:
        log.setLevel(logging.WARNING)  # one voice: rank 0 logs and writes the run directory
    distributed.local_batch_size(cfg.batch_size, world)  # refuses a global batch that does not divide
    log.info("device %s x %d, precision %s", device, world.size, precision.name)
    return world, device, precision


def load_splits(cfg: DictConfig, device: torch.device) -> DataSplits:
    splits = make_splits(
        load_cifar10(cfg.data), cfg.data.val_size, cfg.data.train_subset, cfg.data.test_subset, cfg.seed, device
    )
    log.info(
        "data: %d train, %d val%s, %d test",
        len(splits.train),
        len(splits.val),
        " (= test set)" if splits.val_is_test else "",
        len(splits.test),
    )
    return splits


def build_network(
    cfg: DictConfig, splits: DataSplits, normalize: Normalize, device: torch.device, world: World
) -> tuple[nn.Module, nn.Module]:
    """(model, forward): see place_model."""
    model = build_model(cfg.model)
    if hasattr(model, "init_from_data"):  # data-dependent initialisation, e.g. `fast`'s whitening filters
        sample = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(cfg.seed))[:5000]
        model.init_from_data(normalize(splits.train.images[sample.to(device)]))
    model, forward = place_model(model, cfg, device, world)
    total, trainable = count_parameters(model)
    log.info("model: %s, %.2fM parameters (%.2fM trainable)", type(model).__name__, total / 1e6, trainable / 1e6)
    return model, forward


def build_training(
    cfg: DictConfig,
    model: nn.Module,
    forward: nn.Module,
    splits: DataSplits,
    normalize: Normalize,
    precision: Precision,
    device: torch.device,
    world: World,
) -> tuple[TrainingState, Step]:
    """The training state (what a checkpoint holds) and the step kit that drives it."""
    generators = Generators(cfg.seed, device, world)
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = len(batch_indices(len(splits.train), cfg.batch_size, torch.Generator()))
    ema = None
    if cfg.ema_decay:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    lookahead = None
    if cfg.lookahead_every:
        lookahead = Lookahead(model, cfg.lookahead_every, cfg.lookahead_decay, cfg.epochs * steps_per_epoch)
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        schedule=build_schedule(cfg.scheduler, optimizer, cfg.epochs, steps_per_epoch),
        scaler=precision.grad_scaler(),
        tracker=BestTracker(
            cfg.monitor,
            cfg.early_stopping.min_delta,
            cfg.early_stopping.patience if cfg.early_stopping.enabled else None,
        ),
        generators=generators,
        config=OmegaConf.to_container(cfg, resolve=True),
        ema=ema,
        lookahead=lookahead,
    )
    step = Step(
        model=forward,
        optimizer=optimizer,
        schedule=state.schedule,
        scaler=state.scaler,
        precision=precision,
        augment=instantiate(cfg.augmentation),
        normalize=normalize,
        batch_mix=BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, len(CLASSES)),
        label_smoothing=cfg.label_smoothing,
        grad_clip=cfg.grad_clip,
        ema=ema,
        lookahead=lookahead,
    )
    return state, step


def run_epochs(
    cfg: DictConfig, state: TrainingState, step: Step, splits: DataSplits, run_dir: Path, world: World, logger
) -> str | None:
    """Train, validate and checkpoint each remaining epoch; returns why training stopped early, if it did.

    Every rank validates the same weights (state.sync_ranks) and takes rank 0's numbers, so the
    schedule, the best epoch and early stopping decide alike on all of them."""
    device = splits.train.labels.device
    epochs_bar = tqdm(range(state.epoch + 1, cfg.epochs + 1), desc="epochs", disable=not cfg.progress)
    with StopRequest() as stop:
        for epoch in epochs_bar:
            lr = step.optimizer.param_groups[0]["lr"]
            tic = time.perf_counter()
            try:
                train_loss, train_acc = train_one_epoch(
                    step,
                    splits.train,
                    cfg.batch_size,
                    state.generators.shuffle,
                    state.generators.augment,
                    cfg.progress,
                    stop,
                    world,
                    epoch,
                )
            except TrainingStopped as stopped:
                stopped.args = (f"epoch {epoch}: {stopped}",)
                if world.is_main:
                    record_stop(run_dir, stopped, state.history)
                raise
            train_seconds = time.perf_counter() - tic
            state.sync_ranks(world)
            val = evaluate(state.evaluated, splits.val, step.normalize, step.precision, cfg.eval_batch_size)
            val_loss, val_acc = distributed.main_rank_numbers([val.loss, val.accuracy], device, world)
            step.schedule.after_epoch(val_loss)
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - tic,
            }
            state.end_epoch(row, val_loss if cfg.monitor == "val_loss" else val_acc)
            log.info(
                "epoch %d/%d  lr %.3g  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  %.1fs",
                epoch,
                cfg.epochs,
                lr,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                row["seconds"],
            )
            epochs_bar.set_postfix(val_acc=f"{val_acc:.2f}")
            logger.log_epoch(row)
            state.save(run_dir, world)  # a collective with several ranks: every rank takes part
            if world.is_main:
                artifacts.write_history(run_dir, state.history)
            if state.tracker.should_stop:
                reason = f"early stopping at epoch {epoch}: {state.tracker.reason()}"
                log.info(reason)
                return reason
    return None


@dataclass
class FinalTest:
    result: EvalResult
    epoch: int  # the epoch whose weights were tested
    without_tta: dict | None  # the same weights without test-time augmentation


def final_test(cfg: DictConfig, state: TrainingState, step: Step, splits: DataSplits) -> FinalTest:
    """The test set, read once: the weights `test_weights` names (state.weights_to_test), with `tta`."""
    if state.lookahead is not None:
        state.lookahead.finish()  # a no-op after the last step; after early stopping it matters
    state.evaluated.load_state_dict(weights_to_test(state.weights(), cfg.test_weights))
    epoch = state.tracker.best_epoch if cfg.test_weights == "best" else state.epoch
    test = evaluate(state.evaluated, splits.test, step.normalize, step.precision, cfg.eval_batch_size, cfg.tta)
    log.info(
        "test (%s weights, epoch %d, tta %s): loss %.4f acc %.2f%%",
        cfg.test_weights,
        epoch,
        cfg.tta,
        test.loss,
        test.accuracy,
    )
    without_tta = None
    if cfg.tta != "none":  # what the augmentation at test time adds, measured on the same weights
        plain = evaluate(state.evaluated, splits.test, step.normalize, step.precision, cfg.eval_batch_size)
        without_tta = {"loss": plain.loss, "accuracy": plain.accuracy}
        log.info("test without tta: loss %.4f acc %.2f%%", plain.loss, plain.accuracy)
    return FinalTest(test, epoch, without_tta)


def place_model(model: nn.Module, cfg: DictConfig, device: torch.device, world: World) -> tuple[nn.Module, nn.Module]:
    """(model, forward): the model on its device and memory format, and what the step calls - the
    same module, or it wrapped by DistributedDataParallel and/or torch.compile. Weights and state
    dicts always come from `model`, so checkpoints look the same however the run was launched."""
    if cfg.sync_bn:
        if device.type != "cuda":
            raise UserError("sync_bn=true needs CUDA (torch's SyncBatchNorm runs on GPUs only); use sync_bn=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = model
    if world.enabled:  # averages the gradients over the ranks during backward
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # fuses the step's small ops
        forward = torch.compile(forward)
    return model, forward


def restore(state: TrainingState, checkpoint: dict, run_dir: Path) -> None:
    """Puts last.pt back into `state`; what had to be re-seeded (another device) goes to the log."""
    try:
        notes = state.load_state_dict(checkpoint)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise UserError(
            f"checkpoint {run_dir}/checkpoints/last.pt does not fit this run and cannot be resumed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:150]})"
        ) from None
    for note in notes:
        log.warning("resume: %s", note)
    log.info("resumed %s after epoch %d", run_dir, state.epoch)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside torch.compile and DistributedDataParallel wrappers."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module) if isinstance(module, DistributedDataParallel) else module


def record_stop(run_dir: Path, stopped: TrainingStopped, history: list[dict]) -> None:
    """metrics.json of a run that did not finish: why, how far it got, how to go on."""
    info = {
        "status": stopped.status,
        "error": str(stopped),
        "epochs_run": len(history),
        "last_good_checkpoint": str(run_dir / "checkpoints" / "last.pt") if history else None,
    }
    if isinstance(stopped, Interrupted) and history:
        info["resume"] = f"cifarbench train resume={run_dir}"
    artifacts.write_json(run_dir / "metrics.json", info)
