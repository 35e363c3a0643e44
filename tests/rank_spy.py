"""`cifarbench` as torchrun starts it, but each rank also saves what it ended training with (weights,
batch-norm statistics, history, the precision its step ran in) to $RANK_SPY_DIR/rank<N>.pt, which
only rank 0's run directory would otherwise show. With $RANK_SPY_PRECISION, `precision=auto`'s
probe answers that precision (as a CPU where it wins would). Used by test_distributed."""

from __future__ import annotations

import os
import sys

import torch

from cifarbench import train
from cifarbench.cli import main
from cifarbench.precision import Choice

real_run_epochs = train.run_epochs


def run_epochs_and_save(cfg, state, step, *args, **kwargs):
    stopped = real_run_epochs(cfg, state, step, *args, **kwargs)
    spy = {"weights": state.model.state_dict(), "history": state.history, "stopped": stopped,
           "precision": step.precision.name}  # fmt: skip
    torch.save(spy, os.path.join(os.environ["RANK_SPY_DIR"], f"rank{os.environ['RANK']}.pt"))
    return stopped


train.run_epochs = run_epochs_and_save
if os.environ.get("RANK_SPY_PRECISION"):
    train.choose = lambda *args, **kwargs: Choice(os.environ["RANK_SPY_PRECISION"], "measured", {"unit": "spy"})
sys.exit(main(sys.argv[1:]))
