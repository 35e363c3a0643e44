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
from torch import nn

from cifarbench import record
from cifarbench.data import DataInfo, Normalize, Split, splits_for
from cifarbench.errors import UserError
from cifarbench.evaluation import evaluate
from cifarbench.models import build_model
from cifarbench.precision import recorded_precision
from cifarbench.predict import read_image, top_classes
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
    data: DataInfo  # its classes, statistics and image size (CIFAR-10 for runs from before the record)

    def normalize(self) -> Normalize:
        """The run's normalisation, on the model's device and memory format."""
        device = next(self.model.parameters()).device
        return Normalize(
            self.config["data"]["normalization"], device, self.config.get("channels_last", True), self.data
        )


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
    data = DataInfo.from_record(checkpoint.get("data") or record.read(run_dir).get("data"))
    model = build_model(model_cfg, data.num_classes, data.image_size)
    try:
        model.load_state_dict(weights_to_test(checkpoint, which))
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit the model in its own config: {str(exc)[:200]}") from None
    device = device or select_device("auto")
    model = model.to(device).eval()
    if config.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    precision = recorded_precision(checkpoint, device, record.read(run_dir).get("precision"))
    return LoadedRun(model, config, path, which, checkpoint["history"], precision, data)


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
    return cfg, splits_for(cfg, device).test, loaded.normalize(), loaded.precision


@torch.no_grad()
def predict_run(run_dir: Path, images: list[Path], output: Path, which: str = "auto", top: int = 3) -> list[dict]:
    """`cifarbench predict RUN_DIR IMAGE...`: the run's model in torch, under its recorded precision."""
    if not images:
        raise UserError("no images given; usage: cifarbench predict RUN_DIR IMAGE [IMAGE ...]")
    loaded = load_trained(run_dir, which)
    device = next(loaded.model.parameters()).device
    pixels = np.stack([read_image(path, loaded.data.image_size) for path in images])
    with loaded.precision.autocast():  # as the run trained and tested: its recorded precision
        logits = loaded.model(loaded.normalize()(torch.from_numpy(pixels).to(device)))
    probabilities = logits.float().softmax(1).cpu().numpy()
    return top_classes(images, probabilities, loaded.data.classes, output, top)
