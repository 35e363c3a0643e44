"""The Hydra task behind `cifarbench train`: one job = one run directory."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cifarbench.artifacts import write_json
from cifarbench.errors import UserError
from cifarbench.train import fit

log = logging.getLogger("cifarbench")


def train_job(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        OmegaConf.resolve(cfg)  # the saved config says what ran, not how it was computed
        OmegaConf.save(cfg, run_dir / "config.yaml")
        return fit(cfg, run_dir)["test"]["accuracy"]
    except UserError as exc:
        if in_sweep:  # one bad job must not lose the others: record it, let the sweep go on
            log.error("cifarbench: error: %s", exc)
            write_json(run_dir / "metrics.json", {"status": "failed", "error": str(exc)})
            return None
        if not (run_dir / "history.csv").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run-looking folder
        print(f"cifarbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        write_json(run_dir / "metrics.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        if in_sweep:
            log.exception("job failed")
            return None
        raise
