"""What "best" means for a run, and when to stop early (top-level `monitor`, `early_stopping.*`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cifarbench.errors import check_choice
from cifarbench.options import MONITORS


@dataclass
class BestTracker:
    """Tracks the monitored validation metric: lower is better for a loss, higher for accuracy.

    An epoch improves on the best when it beats it by more than `min_delta`; after `patience`
    epochs without improvement `should_stop` turns true (never, when patience is None).
    """

    monitor: str = "val_acc"
    min_delta: float = 0.0
    patience: int | None = None
    best: float = math.nan
    best_epoch: int | None = None  # None until an epoch is validated (validate_every=0: never)
    epochs_without_improvement: int = 0

    def __post_init__(self) -> None:
        check_choice("monitor", self.monitor, MONITORS)

    @property
    def minimize(self) -> bool:
        return self.monitor.endswith("loss")

    def update(self, epoch: int, value: float) -> bool:
        """Records `value` for `epoch`; True when it is a new best."""
        gain = (self.best - value) if self.minimize else (value - self.best)
        if math.isnan(self.best) or gain > self.min_delta:
            self.best, self.best_epoch, self.epochs_without_improvement = value, epoch, 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience

    def reason(self) -> str:
        return (
            f"{self.monitor} did not improve by more than {self.min_delta} for {self.patience} epochs "
            f"(best {self.best:.4f} at epoch {self.best_epoch})"
        )

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
