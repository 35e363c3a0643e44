"""The Hydra task behind `cifarbench train`: one job = one run directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifarbench.errors import UserError
from cifarbench.train import fit


def train_job(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        OmegaConf.resolve(cfg)  # the saved config says what ran, not how it was computed
        OmegaConf.save(cfg, run_dir / "config.yaml")
        metrics = fit(cfg, run_dir)
    except UserError as exc:
        if not (run_dir / "history.csv").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run-looking folder
        print(f"cifarbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return metrics["test"]["accuracy"]
