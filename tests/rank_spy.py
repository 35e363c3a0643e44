"""`cifarbench` as torchrun starts it, but each rank also saves what it ended training with (weights,
batch-norm statistics, history) to $RANK_SPY_DIR/rank<N>.pt, which only rank 0's run directory
would otherwise show. Used by test_distributed."""

from __future__ import annotations

import os
import sys

import torch

from cifarbench import train
from cifarbench.cli import main

real_run_epochs = train.run_epochs


def run_epochs_and_save(cfg, state, *args, **kwargs):
    stopped = real_run_epochs(cfg, state, *args, **kwargs)
    spy = {"weights": state.model.state_dict(), "history": state.history, "stopped": stopped}
    torch.save(spy, os.path.join(os.environ["RANK_SPY_DIR"], f"rank{os.environ['RANK']}.pt"))
    return stopped


train.run_epochs = run_epochs_and_save
sys.exit(main(sys.argv[1:]))
