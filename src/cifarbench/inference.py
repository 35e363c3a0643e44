"""Using a trained run: its tested weights back from last.pt, `cifarbench evaluate` and `cifarbench predict`.

Everything is rebuilt from the config saved inside the checkpoint, so a run directory is all it
needs; nothing here writes into the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from cifarbench import record
from cifarbench.data import CLASSES, Normalize, Split, splits_for
from cifarbench.errors import UserError
from cifarbench.evaluation import evaluate
from cifarbench.files import write_csv
from cifarbench.models import build_model
from cifarbench.precision import recorded_precision
from cifarbench.runtime import Precision, select_device
from cifarbench.state import load_checkpoint, weights_to_test


@dataclass
class LoadedRun:
    model: nn.Module
    config: dict
    checkpoint: Path
    which: str  # best | last
    history: list[dict]
    precision: Precision  # the one the run trained and tested in (precision.recorded_precision)


def load_trained(run_dir: Path, which: str = "auto", device: torch.device | None = None) -> LoadedRun:
    """The weights the run tested with (`auto`: as its `test_weights` says), or its `best` or `last`
    ones, all read from last.pt by state.weights_to_test, the function the final test used."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; expected a run directory with checkpoints/")
    if which not in ("auto", "best", "last"):
        raise UserError(f"--checkpoint {which!r} is not known; choose best, last or auto")
    path = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    if which == "auto":
        which = config.get("test_weights", "best")
    model_cfg = OmegaConf.create(config["model"])
    if "weights" in model_cfg:
        model_cfg.weights = "none"  # every weight comes from the checkpoint: nothing to download
    model = build_model(model_cfg)
    try:
        model.load_state_dict(weights_to_test(checkpoint, which))
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit the model in its own config: {str(exc)[:200]}") from None
    device = device or select_device("auto")
    model = model.to(device).eval()
    if config.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    precision = recorded_precision(checkpoint, device, record.read(run_dir).get("precision"))
    return LoadedRun(model, config, path, which, checkpoint["history"], precision)


def evaluate_run(run_dir: Path, which: str = "auto") -> dict:
    """Re-evaluates the run's test set exactly as at the end of training (same split, precision,
    batch size and test-time augmentation); returns {"loss", "accuracy", "error"} and the
    metrics.json values to compare."""
    loaded = load_trained(run_dir, which)
    cfg, test, normalize, precision = final_test_setting(loaded)
    result = evaluate(loaded.model, test, normalize, precision, cfg.eval_batch_size, cfg.tta)
    recorded = record.read(run_dir).get("test") or {}
    return {
        "checkpoint": f"{loaded.checkpoint} ({loaded.which} weights, tta {cfg.tta})",
        "test": {"loss": result.loss, "accuracy": result.accuracy, "error": 100.0 - result.accuracy},
        "recorded": {k: recorded.get(k) for k in ("loss", "accuracy", "error")},
    }


def final_test_setting(loaded: LoadedRun) -> tuple[DictConfig, Split, Normalize, Precision]:
    """The run's config, its test split, normalisation and precision, on the model's device: the
    final test's setting, for re-evaluating it or for reading it later (a search's best trial)."""
    cfg = OmegaConf.create(loaded.config)
    device = next(loaded.model.parameters()).device
    return (
        cfg,
        splits_for(cfg, device).test,
        Normalize(cfg.data.normalization, device, cfg.channels_last),
        loaded.precision,
    )


def read_image(path: Path) -> torch.Tensor:
    """Any PNG/JPEG, any size -> uint8 (3, 32, 32), resized with antialiasing as CIFAR-10 was."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=None)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc})") from None
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


@torch.no_grad()
def predict(run_dir: Path, images: list[Path], output: Path, which: str = "auto", top: int = 3) -> list[dict]:
    if not images:
        raise UserError("no images given; usage: cifarbench predict RUN_DIR IMAGE [IMAGE ...]")
    loaded = load_trained(run_dir, which)
    device = next(loaded.model.parameters()).device
    cfg = loaded.config
    normalize = Normalize(cfg["data"]["normalization"], device, cfg.get("channels_last", True))
    batch = torch.stack([read_image(path) for path in images]).to(device)
    with loaded.precision.autocast():  # as the run trained and tested: its recorded precision
        logits = loaded.model(normalize(batch))
    probabilities = logits.float().softmax(1).cpu()
    results = []
    for path, probs in zip(images, probabilities, strict=True):
        values, indices = probs.topk(top)
        results.append(
            {"image": str(path), "top": [(CLASSES[i], float(v)) for v, i in zip(values, indices, strict=True)]}
        )
    headers = ["image", *(f"{kind}{k}" for k in range(1, top + 1) for kind in ("class", "prob"))]
    rows = [[r["image"], *(x for pair in r["top"] for x in (pair[0], f"{pair[1]:.4f}"))] for r in results]
    write_csv(output, headers, rows)
    return results
