"""The training loop: one loop for every model, read top to bottom.

    data (uint8 splits on the device) -> model -> train_one_epoch / evaluate per epoch -> artifacts

`fit` is the whole run; `train_one_epoch` and `evaluate` are the two halves of an epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cifarbench import artifacts
from cifarbench.checkpoint import save_checkpoint
from cifarbench.data import CLASSES, Normalize, Split, load_cifar10, make_splits
from cifarbench.models import build_model, count_parameters
from cifarbench.optimizers import build_optimizer
from cifarbench.runtime import Precision, select_device, select_precision, versions
from cifarbench.schedulers import Schedule, build_schedule

log = logging.getLogger("cifarbench")


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


def train_one_epoch(
    model: nn.Module,
    train: Split,
    batch_size: int,
    augment,
    normalize: Normalize,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    progress: bool,
) -> tuple[float, float]:
    """One pass over the shuffled training split; returns (mean loss, accuracy %)."""
    model.train()
    device = train.labels.device
    # Loss and hits stay on the device; reading them every batch would force a sync per step.
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = tqdm(batch_indices(len(train), batch_size, generator), desc="train", leave=False, disable=not progress)
    for step, idx in enumerate(bar):
        idx = idx.to(device, non_blocking=True)
        inputs = normalize(augment(train.images[idx], generator))
        labels = train.labels[idx]
        with precision.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.after_batch()
        loss_sum += loss.detach() * len(idx)
        hits += (logits.argmax(1) == labels).sum()
        seen += len(idx)
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * hits.item() / seen:.1f}")
    return loss_sum.item() / seen, 100.0 * hits.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, normalize: Normalize, precision: Precision, batch_size: int) -> EvalResult:
    model.eval()
    losses, probabilities = [], []
    for idx in batch_indices(len(split), batch_size, None):
        idx = idx.to(split.labels.device)
        with precision.autocast():
            logits = model(normalize(split.images[idx])).float()
        losses.append(F.cross_entropy(logits, split.labels[idx], reduction="sum"))
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities).cpu()
    labels = split.labels.cpu()
    predictions = probs.argmax(1)
    accuracy = 100.0 * (predictions == labels).double().mean().item()
    return EvalResult(torch.stack(losses).sum().item() / len(split), accuracy, predictions, labels, probs)


def fit(cfg: DictConfig, run_dir: Path) -> dict:
    """Train `cfg` and write its run directory; returns metrics.json's content."""
    started = datetime.now()
    torch.manual_seed(cfg.seed)  # model initialisation
    device = select_device(cfg.device)
    precision = select_precision(cfg.precision, device)

    splits = make_splits(
        load_cifar10(cfg.data),
        cfg.data.val_size,
        cfg.data.train_subset,
        cfg.data.test_subset,
        cfg.seed,
        device,
    )
    normalize = Normalize(cfg.data.normalization, device, cfg.channels_last)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # shuffling and augmentation
    log.info(
        "data: %d train, %d val%s, %d test | device %s, precision %s",
        len(splits.train),
        len(splits.val),
        " (= test set)" if splits.val_is_test else "",
        len(splits.test),
        device,
        precision.name,
    )

    model = build_model(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    total_params, trainable_params = count_parameters(model)
    augment = instantiate(cfg.augmentation)
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = len(batch_indices(len(splits.train), cfg.batch_size, generator.clone_state()))
    schedule = build_schedule(cfg.scheduler, optimizer, cfg.epochs, steps_per_epoch)
    scaler = precision.grad_scaler()
    log.info(
        "model: %s, %.2fM parameters (%.2fM trainable)",
        type(model).__name__,
        total_params / 1e6,
        trainable_params / 1e6,
    )

    config = OmegaConf.to_container(cfg, resolve=True)
    history: list[dict] = []
    best_acc, best_epoch, best_state = -math.inf, 0, None
    epochs_bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not cfg.progress)
    for epoch in epochs_bar:
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            splits.train,
            cfg.batch_size,
            augment,
            normalize,
            optimizer,
            schedule,
            precision,
            scaler,
            generator,
            cfg.progress,
        )
        val = evaluate(model, splits.val, normalize, precision, cfg.eval_batch_size)
        schedule.after_epoch(val.loss)
        seconds = time.perf_counter() - tic
        history.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val.loss,
                "val_acc": val.accuracy,
                "seconds": seconds,
            }
        )
        log.info(
            "epoch %d/%d  lr %.3g  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  %.1fs",
            epoch,
            cfg.epochs,
            lr,
            train_loss,
            train_acc,
            val.loss,
            val.accuracy,
            seconds,
        )
        epochs_bar.set_postfix(val_acc=f"{val.accuracy:.2f}")

        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "epoch": epoch,
            "config": config,
            "history": history,
        }
        if val.accuracy > best_acc:
            best_acc, best_epoch = val.accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())
            save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
        save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
        artifacts.write_history(run_dir, history)

    if cfg.test_weights == "best" and best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate(model, splits.test, normalize, precision, cfg.eval_batch_size)
    log.info(
        "test (%s weights, epoch %d): loss %.4f acc %.2f%%",
        cfg.test_weights,
        best_epoch if cfg.test_weights == "best" else len(history),
        test.loss,
        test.accuracy,
    )

    metrics = artifacts.run_metrics(
        history=history,
        test=test,
        classes=CLASSES,
        extra={
            "status": "completed",
            "best_epoch": best_epoch,
            "test_weights": cfg.test_weights,
            "val_is_test": splits.val_is_test,
            "data_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "params": {"total": total_params, "trainable": trainable_params},
            "device": str(device),
            "precision": precision.name,
            "channels_last": bool(cfg.channels_last),
            "seed": cfg.seed,
            "started_at": started.isoformat(timespec="seconds"),
            "total_seconds": (datetime.now() - started).total_seconds(),
            "versions": versions(),
        },
    )
    artifacts.write_run(run_dir, metrics, test, splits.test.images.cpu(), CLASSES, history)
    return metrics
