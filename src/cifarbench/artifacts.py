"""The files of a finished run: its figures from scikit-learn, its plots from matplotlib (Agg).

What they add up to is written by record.py, as metrics.json, once these files are there.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from cifarbench.files import save_figure, write_csv, write_text_atomic

TOP5_FROM = 11  # classes from which top-5 accuracy is recorded (CIFAR-100, folders of many classes)
MAX_NUMBERED_CELLS = 20  # classes up to which the confusion matrix figure prints each cell's number
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_seconds", "seconds")


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_csv(run_dir / "history.csv", HISTORY_FIELDS, [[row.get(f) for f in HISTORY_FIELDS] for row in history])


def run_metrics(history: list[dict], test, classes: tuple[str, ...], extra: dict[str, Any]) -> dict[str, Any]:
    """Everything a report table needs about one finished run. Accuracy and error are percent.
    `test` is None for a run trained without its test (classification_metrics, if it is read later).
    `extra` says how the run was made, `epochs_run` included (a fractional run's 7.5 is not its rows)."""
    last = history[-1]
    seconds = [row["seconds"] for row in history]
    # the median of whole epochs: a fractional run's last row (7.5: the eighth) is part of one
    part_epoch = not float(extra["epochs_run"]).is_integer() and len(seconds) > 1
    whole_epochs = seconds[:-1] if part_epoch else seconds
    return {
        "train": {"loss": last["train_loss"], "accuracy": last["train_acc"]},
        # None: the last epoch was not validated (validate_every=0)
        "val": None if math.isnan(last["val_acc"]) else {"loss": last["val_loss"], "accuracy": last["val_acc"]},
        "test": None if test is None else classification_metrics(test, classes),
        "epoch_seconds": seconds,
        "median_epoch_seconds": statistics.median(whole_epochs),
        # training steps only (no validation): what "minutes of training" means in a speed figure
        "train_seconds": sum(row.get("train_seconds", row["seconds"]) for row in history),
        **extra,
    }


def classification_metrics(test, classes: tuple[str, ...]) -> dict[str, Any]:
    """Loss, accuracy, error and scikit-learn's precision/recall/F1 (macro, weighted, per class);
    top-5 accuracy too from 11 classes on."""
    y_true, y_pred = test.labels.numpy(), test.predictions.numpy()
    labels = list(range(len(classes)))
    metrics: dict[str, Any] = {"loss": test.loss, "accuracy": test.accuracy, "error": 100.0 - test.accuracy}
    if len(classes) >= TOP5_FROM:
        scores = test.probabilities.double().numpy()
        metrics["top5_accuracy"] = 100.0 * top_k_accuracy_score(y_true, scores, k=5, labels=labels)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        metrics.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    return metrics


def write_run_files(
    run_dir: Path, test, test_images: torch.Tensor, classes: tuple[str, ...], history: list[dict]
) -> None:
    """The files of a finished run; without `test` (a run not tested yet) only the curves."""
    if test is not None:
        y_true, y_pred = test.labels.numpy(), test.predictions.numpy()
        labels = list(range(len(classes)))
        write_confusion_matrix(run_dir, confusion_matrix(y_true, y_pred, labels=labels), classes)
        report = classification_report(
            y_true, y_pred, labels=labels, target_names=list(classes), digits=4, zero_division=0
        )
        write_text_atomic(run_dir / "classification_report.txt", report)
        plot_samples(test_images, y_true, y_pred, classes, run_dir / "samples.png")
    plot_curves(history, run_dir / "curves.png")


def write_confusion_matrix(run_dir: Path, matrix: np.ndarray, classes: tuple[str, ...]) -> None:
    rows = [[name, *row.tolist()] for name, row in zip(classes, matrix, strict=True)]
    write_csv(run_dir / "confusion_matrix.csv", ["true \\ predicted", *classes], rows)
    row_sums = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    # up to 20 classes each cell shows its number; beyond, colours alone (the numbers are in the CSV)
    numbered = len(classes) <= MAX_NUMBERED_CELLS
    side = 7 if numbered else min(24, 4 + 0.16 * len(classes))
    fig, axes = plt.subplots(1, 2, figsize=(2.4 * side + 0.2, side))
    for ax, data, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        ConfusionMatrixDisplay(data, display_labels=list(classes)).plot(
            ax=ax,
            cmap="Blues",
            values_format=fmt,
            colorbar=not numbered,
            xticks_rotation=90 if not numbered else 45,
            include_values=numbered,
        )
        if not numbered:
            ax.tick_params(labelsize=max(3, 9 - len(classes) // 20))
        ax.set_title(f"Confusion matrix ({title})")
    fig.tight_layout()
    save_figure(fig, run_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in history], marker="o", label=split)
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def plot_samples(
    images: torch.Tensor, y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], path: Path, count: int = 32
) -> None:
    """A grid of test images titled 'predicted (true)': green when right, red when wrong.

    The images are spread evenly over the test set, which is ordered by class, so every class shows.
    """
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    cols = 8
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks, strict=False):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        right = y_pred[i] == y_true[i]
        ax.set_title(f"{classes[y_pred[i]]}\n({classes[y_true[i]]})", fontsize=8, color="green" if right else "red")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
