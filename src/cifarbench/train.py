"""The training loop: one loop for every model, read top to bottom.

    fit: set_up_process -> load_splits -> build_network -> decide_precision -> build_training -> [restore]
         -> run_epochs (train_one_epoch, evaluate_validation; checkpoint) -> final_test -> files, record

`fit` is the whole run; `train_one_epoch` and the validation pass are the two halves of an epoch.
What a checkpoint holds belongs to state.TrainingState; batching and augmentation to data.Batches;
the evaluation pass to evaluation.py; metrics.json to record.py.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from cifarbench import artifacts, distributed, record
from cifarbench.augmentation import BatchMix
from cifarbench.config import building, instantiate
from cifarbench.data import Batches, DataInfo, DataSplits, Normalize, Split, splits_for
from cifarbench.distributed import SINGLE_PROCESS, World, all_reduce_sum, any_rank
from cifarbench.errors import Diverged, Interrupted, OutOfSpace, TrainingStopped, UserError
from cifarbench.evaluation import EvalResult, evaluate, evaluate_test_set
from cifarbench.files import DiskFull
from cifarbench.interrupt import StopRequest
from cifarbench.loggers import NoLogger
from cifarbench.models import build_model, count_parameters
from cifarbench.optimizers import Lookahead, build_optimizer
from cifarbench.precision import NAMES, Choice, choose, key_fields, resumed_choice
from cifarbench.preflight import check_first_batch, check_optimization
from cifarbench.runtime import Precision, configure_backends, select_device, select_precision, versions
from cifarbench.schedulers import Schedule, build_schedule, epoch_lengths, training_steps
from cifarbench.state import Generators, TrainingState, weights_to_test
from cifarbench.stopping import BestTracker

log = logging.getLogger("cifarbench")
DIVERGED_HINT = "lower optimizer.lr or set grad_clip"

# Called after each validated epoch, once it is checkpointed, with the epoch and its monitored
# figure; it may end the run by raising TrainingStopped (a search trial's pruning, errors.Pruned).
EpochHook = Callable[[int, float], None]


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its place among the processes, its device and its precision."""

    world: World
    device: torch.device
    precision_choice: Choice

    @property
    def precision(self) -> Precision:
        return select_precision(self.precision_choice.name, self.device)


@dataclass
class TrainingStep:
    """One optimisation step on a batch: forward under autocast, loss, scaled backward, clipping,
    optimizer, then the per-step schedule, lookahead and EMA. `forward` is what computes the
    logits: the model itself, or it wrapped by DistributedDataParallel and/or torch.compile."""

    forward: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    precision: Precision
    batch_mix: BatchMix
    label_smoothing: float
    grad_clip: float | None
    ema: AveragedModel | None = None
    lookahead: Lookahead | None = None

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, logits) of the batch; the weights have taken the step."""
        targets = labels
        if self.batch_mix.enabled:
            inputs, targets = self.batch_mix(inputs, labels)  # soft targets
        with self.precision.autocast():
            logits = self.forward(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.forward.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.after_batch()
        if self.lookahead is not None:
            self.lookahead.after_batch()
        if self.ema is not None:
            self.ema.update_parameters(self.forward)
        return loss, logits


def train_one_epoch(
    step: TrainingStep,
    batches: Batches,
    progress: bool = False,
    stop: StopRequest | None = None,
    world: World = SINGLE_PROCESS,
    steps: int | None = None,
) -> tuple[float, float]:
    """One pass over `batches` (its first `steps` batches when given: a fractional run's last
    epoch); returns (mean loss, accuracy %) over every rank's images.

    Raises Diverged on a NaN/infinite loss and Interrupted when `stop` was signalled; either way the
    partial epoch is dropped and the last checkpoint (the previous epoch's) stays the good one.
    """
    device = batches.split.labels.device
    # A finiteness check reads the loss: free on the CPU, a sync per step on a GPU, so sparser there.
    check_every = 1 if device.type == "cpu" else 50
    step.forward.train()
    # Loss and hits stay on the device; reading them every batch would force a sync per step.
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device, dtype=torch.int64)
    seen = torch.zeros((), device=device, dtype=torch.int64)
    steps = len(batches) if steps is None else steps
    quiet = not progress or not world.is_main
    bar = tqdm(itertools.islice(batches, steps), total=steps, desc="train", leave=False, disable=quiet)
    for i, (inputs, labels) in enumerate(bar):
        loss, logits = step(inputs, labels)
        if i % check_every == 0 and any_rank(not torch.isfinite(loss).item(), device, world):
            raise Diverged(f"the training loss became {loss.item()} at batch {i + 1}; {DIVERGED_HINT}")
        loss_sum += loss.detach() * len(labels)
        hits += (logits.argmax(1) == labels).sum()
        seen += len(labels)
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


def fit(
    cfg: DictConfig,
    run_dir: Path,
    resume: dict | None = None,
    after_epoch: EpochHook | None = None,
    read_test_set: bool = True,
) -> dict:
    """Train `cfg` and write its run directory; returns its record (metrics.json's content).

    `resume` is a last.pt checkpoint of this run: training continues after its epoch with every
    state restored (see state.TrainingState). `after_epoch` hears each validated epoch (EpochHook).
    Without `read_test_set` the run ends untested, its test null in the record: whoever trained it
    decides later whether its test set is read (a search reads only its best trial's).
    """
    started = datetime.now()
    world, device = set_up_process(cfg)
    splits = load_splits(cfg, device)
    normalize = Normalize(cfg.data.normalization, device, cfg.channels_last, splits.info)
    model, forward = build_network(cfg, splits.train, splits.info, normalize, device, world)
    runtime = Runtime(world, device, decide_precision(cfg, model, splits.train, normalize, device, world, resume))
    state, step, batches = build_training(cfg, model, forward, splits, normalize, runtime)
    if resume is not None:
        restore(state, resume, run_dir)
    main = runtime.world.is_main
    logger = instantiate(cfg.logger)(run_dir=run_dir, config=state.config) if main else NoLogger(run_dir, {})

    setup_seconds = (datetime.now() - started).total_seconds()
    try:
        if resume is not None and main:
            state.save_best(run_dir)  # it may be older than last.pt, and no epoch may be left to save
        stop_reason = run_epochs(cfg, state, step, batches, splits.val, run_dir, runtime, logger, after_epoch)

        test, tic = None, time.perf_counter()
        if read_test_set:
            test = final_test(cfg, state, splits.test, normalize, runtime.precision)
        metrics = artifacts.run_metrics(
            state.history, test, splits.info.classes, run_facts(cfg, state, splits, runtime)
        )
        metrics.update(
            stopped_early=stop_reason,
            test_without_tta=None if test is None else test.without_tta,
            resumed=resume is not None,
            started_at=started.isoformat(timespec="seconds"),
            setup_seconds=setup_seconds,  # start to the first epoch: imports aside, data, model, restore
            test_seconds=time.perf_counter() - tic,  # the final test (all TTA views) and its metrics
            total_seconds=(datetime.now() - started).total_seconds(),
        )
        if main:
            artifacts.write_run_files(run_dir, test, splits.test.images.cpu(), splits.info.classes, state.history)
            metrics = record.write(run_dir, record.COMPLETED, metrics)  # last: "completed" means every file is there
    except DiskFull as full:  # the last.pt on disk is intact (files.write_atomic): resumable once there is space
        stopped = OutOfSpace(str(full))
        record_stop(run_dir, stopped, state.saved_epoch)
        raise stopped from None
    if main:
        logger.finish(metrics)
    return metrics


def set_up_process(cfg: DictConfig) -> tuple[World, torch.device]:
    """Seed, determinism, process group, device and the device's backend flags."""
    torch.manual_seed(cfg.seed)  # model initialisation, and the global draws of dropout and mixup
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    world, rank_device = distributed.init(cfg.device)  # one process unless launched by torchrun
    device = rank_device or select_device(cfg.device)
    configure_backends(device, cfg.deterministic)
    if not world.is_main:
        log.setLevel(logging.WARNING)  # one voice: rank 0 logs and writes the run directory
    distributed.local_batch_size(cfg.batch_size, world)  # refuses a global batch that does not divide
    log.info("device %s x %d", device, world.size)
    return world, device


def decide_precision(
    cfg: DictConfig,
    model: nn.Module,
    train: Split,
    normalize: Normalize,
    device: torch.device,
    world: World,
    resume: dict | None,
) -> Choice:
    """The run's precision, decided once: a resumed run keeps its checkpoint's (unless it was decided
    for another kind of device); a new one asks precision.choose (on the CPU with `auto`: a timing of
    this model on one of its batches, on rank 0 alone while the others wait, then told to every rank)."""
    choice = resumed_choice(resume, device) if resume is not None else None
    if choice is None:
        if cfg.precision != "auto":  # a forced one is checked on every rank, so that all refuse alike
            select_precision(cfg.precision, device)
        choice = Choice("fp32", "rank 0's")
        if world.is_main:
            batch = distributed.local_batch_size(cfg.batch_size, world)
            inputs, labels = normalize(train.images[:batch]), train.labels[:batch]
            key = None
            if cfg.precision_cache:
                model_config = OmegaConf.to_container(cfg.model, resolve=True)
                key = key_fields(model_config, batch, tuple(inputs.shape[1:]), cfg.channels_last, cfg.compile)
            steps_per_epoch = len(train) // cfg.batch_size
            choice = choose(cfg.precision, device, model, inputs, labels, steps_per_epoch, key)
            choice = Choice(choice.name, choice.how, {"device": device.type, **choice.detail})
        if world.enabled:
            names = list(NAMES)
            index = distributed.main_rank_numbers([names.index(choice.name)], device, world)[0]
            choice = choice if world.is_main else Choice(names[int(index)], "rank 0's")
    log.info("precision %s", choice.describe())
    return choice


def load_splits(cfg: DictConfig, device: torch.device) -> DataSplits:
    splits = splits_for(cfg, device)
    info = splits.info
    val_note = " (= test set)" if splits.val_is_test else ""
    log.info(
        "data: %s, %d classes, %dx%d; %d train, %d val%s, %d test",
        info.name if info.labels == "fine" else f"{info.name} ({info.labels} labels)",
        info.num_classes,
        info.image_size,
        info.image_size,
        len(splits.train),
        len(splits.val),
        val_note,
        len(splits.test),
    )
    return splits


def build_network(
    cfg: DictConfig, train: Split, data: DataInfo, normalize: Normalize, device: torch.device, world: World
) -> tuple[nn.Module, nn.Module]:
    """(model, forward) for `data`'s classes and image size: see place_model."""
    with building("model", cfg.model):
        model = build_model(cfg.model, data.num_classes, data.image_size)
    if hasattr(model, "init_from_data"):  # data-dependent initialisation, e.g. `fast`'s whitening filters
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:5000]
        model.init_from_data(normalize(train.images[sample.to(device)]))
    model, forward = place_model(model, cfg, device, world)
    total, trainable = count_parameters(model)
    log.info("model: %s, %.2fM parameters (%.2fM trainable)", type(model).__name__, total / 1e6, trainable / 1e6)
    return model, forward


def build_training(
    cfg: DictConfig, model: nn.Module, forward: nn.Module, splits: DataSplits, normalize: Normalize, runtime: Runtime
) -> tuple[TrainingState, TrainingStep, Batches]:
    """The training state (what a checkpoint holds), the step that changes it, and the batches it eats."""
    train, num_classes = splits.train, splits.info.num_classes
    generators = Generators(cfg.seed, runtime.device, runtime.world)
    with building("augmentation", cfg.augmentation):
        augmentation = instantiate(cfg.augmentation)
    batches = Batches(
        train,
        cfg.batch_size,
        augmentation,
        normalize,
        generators.shuffle,
        generators.augmentation,
        runtime.world,
    )
    check_first_batch(model, augmentation, train.images, normalize, cfg, num_classes)
    check_optimization(cfg, len(batches))  # what torch would refuse only later, refused before the first batch
    optimizer = build_optimizer(cfg.optimizer, model)
    ema = None
    if cfg.ema_decay:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    lookahead = None
    if cfg.lookahead_every:
        lookahead = Lookahead(model, cfg.lookahead_every, cfg.lookahead_decay, training_steps(cfg.epochs, len(batches)))
    patience = cfg.early_stopping.patience if cfg.early_stopping.enabled else None
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        schedule=build_schedule(cfg.scheduler, optimizer, cfg.epochs, len(batches)),
        scaler=runtime.precision.grad_scaler(),
        tracker=BestTracker(cfg.monitor, cfg.early_stopping.min_delta, patience),
        generators=generators,
        config=OmegaConf.to_container(cfg, resolve=True),
        precision=runtime.precision_choice.record(),
        data=splits.info.record(),
        ema=ema,
        lookahead=lookahead,
    )
    step = TrainingStep(
        forward=forward,
        optimizer=optimizer,
        schedule=state.schedule,
        scaler=state.scaler,
        precision=runtime.precision,
        batch_mix=BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes),
        label_smoothing=cfg.label_smoothing,
        grad_clip=cfg.grad_clip,
        ema=ema,
        lookahead=lookahead,
    )
    return state, step, batches


def run_epochs(
    cfg: DictConfig,
    state: TrainingState,
    step: TrainingStep,
    batches: Batches,
    val: Split,
    run_dir: Path,
    runtime: Runtime,
    logger: Any,
    after_epoch: EpochHook | None = None,
) -> str | None:
    """Train, validate and checkpoint each remaining epoch; returns why training stopped early, if it did.

    Every rank validates the same weights (state.sync_ranks) and takes rank 0's numbers, so the
    schedule, the best epoch and early stopping decide alike on all of them. `after_epoch` hears
    each validated epoch's monitored figure once it is checkpointed, and may stop the run."""
    world = runtime.world
    lengths = epoch_lengths(cfg.epochs, len(batches))  # epochs=7.5: the eighth is half of one
    last_epoch, full = len(lengths), lengths[0]
    if state.tracker.should_stop:  # resumed after early stopping ended it (its final files did not fit)
        return f"early stopping at epoch {state.epoch}: {state.tracker.reason()}"
    epochs_bar = tqdm(range(state.epoch + 1, last_epoch + 1), desc="epochs", disable=not cfg.progress)
    with StopRequest() as stop:
        for epoch in epochs_bar:
            lr = step.optimizer.param_groups[0]["lr"]
            tic = time.perf_counter()
            batches.epoch = epoch
            steps = lengths[epoch - 1]
            try:
                train_loss, train_acc = train_one_epoch(step, batches, cfg.progress, stop, world, steps)
            except TrainingStopped as stopped:
                stopped.args = (f"epoch {epoch}: {stopped}",)
                if world.is_main:
                    record_stop(run_dir, stopped, state.saved_epoch)
                raise
            train_seconds = time.perf_counter() - tic
            state.sync_ranks(world)
            # validate_every: a checkpoint from before the key existed validated every epoch
            is_validated = is_validation_epoch(epoch, last_epoch, cfg.get("validate_every", 1))
            val_loss, val_acc = math.nan, math.nan
            if is_validated:
                val_loss, val_acc = evaluate_validation(state, val, batches.normalize, runtime, cfg.eval_batch_size)
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
            monitored = val_loss if cfg.monitor == "val_loss" else val_acc
            state.end_epoch(row, monitored if is_validated else None)
            val_text = f"val loss {val_loss:.4f} acc {val_acc:.2f}%" if is_validated else "not validated"
            part = f" ({steps} of {full} batches)" if steps < full else ""
            log.info(
                "epoch %d/%d%s  lr %.3g  train loss %.4f acc %.2f%%  %s  %.1fs",
                epoch,
                last_epoch,
                part,
                lr,
                train_loss,
                train_acc,
                val_text,
                row["seconds"],
            )
            epochs_bar.set_postfix(val_acc=f"{val_acc:.2f}")
            logger.log_epoch(row if is_validated else {k: v for k, v in row.items() if not k.startswith("val_")})
            state.save(run_dir, world)  # a collective with several ranks: every rank takes part
            if world.is_main:
                artifacts.write_history(run_dir, state.history)
            if state.tracker.should_stop:
                reason = f"early stopping at epoch {epoch}: {state.tracker.reason()}"
                log.info(reason)
                if state.lookahead is not None:  # the run ends on the slow weights: its last row and last.pt too
                    state.lookahead.finish()
                    row["val_loss"], row["val_acc"] = evaluate_validation(
                        state, val, batches.normalize, runtime, cfg.eval_batch_size
                    )
                    state.save(run_dir, world)
                    if world.is_main:
                        artifacts.write_history(run_dir, state.history)
                return reason
            if after_epoch is not None and is_validated:
                try:
                    after_epoch(epoch, monitored)
                except TrainingStopped as stopped:
                    if world.is_main:
                        record_stop(run_dir, stopped, state.saved_epoch)
                    raise
    return None


def evaluate_validation(
    state: TrainingState, val: Split, normalize: Normalize, runtime: Runtime, batch_size: int
) -> list[float]:
    """[loss, accuracy] of the weights the run evaluates, rank 0's on every rank."""
    result = evaluate(state.evaluated, val, normalize, runtime.precision, batch_size)
    return distributed.main_rank_numbers([result.loss, result.accuracy], runtime.device, runtime.world)


def is_validation_epoch(epoch: int, epochs: int, every: int | None) -> bool:
    """Whether `epoch` is validated: every `every`-th and always the last (only the last: None;
    none: 0). The fast recipes' validation set is the test set and nothing decides on it there, so
    they skip it: a last validation would be the final test's figure without TTA, a pass too many."""
    if every == 0:
        return False
    return epoch == epochs or (every is not None and epoch % every == 0)


def final_test(
    cfg: DictConfig, state: TrainingState, test: Split, normalize: Normalize, precision: Precision
) -> EvalResult:
    """The test set, read once: the weights `test_weights` names (state.weights_to_test) with `tta`,
    and the same weights without test-time augmentation when `tta` is on."""
    state.evaluated.load_state_dict(weights_to_test(state.weights(), cfg.test_weights))
    return evaluate_test_set(state.evaluated, cfg, test, normalize, precision, state.tested_epoch(cfg.test_weights))


def run_facts(cfg: DictConfig, state: TrainingState, splits: DataSplits, runtime: Runtime) -> dict:
    """What the run record says about how the run was made, beside its numbers."""
    total, trainable = count_parameters(state.model)
    return {
        "epochs_run": min(len(state.history), cfg.epochs),  # 7.5 for epochs=7.5, not its 8 history rows
        "monitor": cfg.monitor,
        "best_epoch": state.tracker.best_epoch,
        "test_weights": cfg.test_weights,
        "test_weights_epoch": state.tested_epoch(cfg.test_weights),
        "ema": bool(cfg.ema_decay),
        "lookahead": bool(cfg.lookahead_every),
        "tta": cfg.tta,
        "val_is_test": splits.val_is_test,
        "data": splits.info.record(),
        "data_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "params": {"total": total, "trainable": trainable},
        "device": str(runtime.device),
        "precision": runtime.precision.name,
        "precision_choice": runtime.precision_choice.record(),
        "channels_last": bool(cfg.channels_last),
        "deterministic": bool(cfg.deterministic),
        "processes": runtime.world.size,
        "seed": cfg.seed,
        "versions": versions(),
    }


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


def record_stop(run_dir: Path, stopped: TrainingStopped, saved_epoch: int) -> None:
    """The record of a run that did not finish: why, how far its last checkpoint got, how to go on.
    On a full disk even that may not fit: the run's checkpoint and history still say how far it got."""
    resumable = stopped.status == record.INTERRUPTED
    try:
        record.write_stopped(run_dir, stopped.status, str(stopped), saved_epoch, resumable, stopped.reason)
    except DiskFull:
        log.warning("the run's record (metrics.json) did not fit on the disk either")
