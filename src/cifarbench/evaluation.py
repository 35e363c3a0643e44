"""Evaluation: a model's loss, accuracy and predictions on a split, with test-time augmentation.

The one pass that validation (train.py), the final test (train.py, and a search's best trial once
the search ends) and `cifarbench evaluate` (inference.py) all run, so their figures agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cifarbench.augmentation import tta_views
from cifarbench.data import Normalize, Split, batch_indices
from cifarbench.runtime import Precision

log = logging.getLogger("cifarbench")


@dataclass
class EvalResult:
    loss: float
    accuracy: float  # percent
    predictions: torch.Tensor  # (N,) on the CPU
    labels: torch.Tensor  # (N,) on the CPU
    probabilities: torch.Tensor  # (N, classes) on the CPU
    without_tta: dict | None = None  # {"loss", "accuracy"} of the image itself alone, when `tta` is on


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, normalize: Normalize, precision: Precision, batch_size: int, tta: str = "none"
) -> EvalResult:
    """Loss, accuracy and predictions on `split`; `tta` averages the logits over flipped and
    translated views (augmentation.tta_views), and the first view, the image itself, gives the
    figures without TTA in the same pass (the same numbers as evaluating again with tta=none)."""
    model.eval()
    losses, probabilities, plain_losses, plain_hits = [], [], [], []
    for idx in batch_indices(len(split), batch_size, None):
        idx = idx.to(split.labels.device)
        labels = split.labels[idx]
        logits = 0.0
        for i, (weight, view) in enumerate(tta_views(split.images[idx], tta)):
            with precision.autocast():
                view_logits = model(normalize(view)).float()
            if i == 0 and tta != "none":
                plain_losses.append(F.cross_entropy(view_logits, labels, reduction="sum"))
                # argmax of the softmax, as below: ties broken exactly as a separate pass would
                plain_hits.append((view_logits.softmax(1).argmax(1) == labels).sum())
            logits = logits + weight * view_logits
        losses.append(F.cross_entropy(logits, labels, reduction="sum"))
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities).cpu()
    labels = split.labels.cpu()
    predictions = probs.argmax(1)
    accuracy = 100.0 * (predictions == labels).double().mean().item()
    without_tta = None
    if plain_losses:
        plain_accuracy = 100.0 * torch.stack(plain_hits).sum().double().item() / len(split)
        without_tta = {"loss": torch.stack(plain_losses).sum().item() / len(split), "accuracy": plain_accuracy}
    loss = torch.stack(losses).sum().item() / len(split)
    return EvalResult(loss, accuracy, predictions, labels, probs, without_tta)


def evaluate_test_set(
    model: nn.Module, cfg: DictConfig, test: Split, normalize: Normalize, precision: Precision, epoch: int
) -> EvalResult:
    """`model` (holding the weights of `epoch`) on the test set, as `cfg` says: with `tta`, and
    without it too when `tta` is on (from the same pass)."""
    result = evaluate(model, test, normalize, precision, cfg.eval_batch_size, cfg.tta)
    log.info(
        "test (%s weights, epoch %d, tta %s): loss %.4f acc %.2f%%",
        cfg.test_weights,
        epoch,
        cfg.tta,
        result.loss,
        result.accuracy,
    )
    if result.without_tta is not None:
        log.info("test without tta: loss %.4f acc %.2f%%", result.without_tta["loss"], result.without_tta["accuracy"])
    return result
