"""The training state: everything a run needs to go on, and the one code that saves and loads it.

`TrainingState` owns what changes while a run trains (weights, EMA, lookahead, optimizer, schedule,
grad scaler, best-epoch tracker, history, every random generator on every device and rank). Only
its `state_dict` / `load_state_dict` know what a checkpoint holds. `weights_to_test` is the one
answer to "which weights does this run report", used by the final test, resume, `evaluate` and
`predict` alike.

    checkpoints/last.pt   the whole state after the last finished epoch (what resume reads); it also
                          carries the best epoch's weights, so it is complete on its own
    checkpoints/best.pt   the best epoch's weights as a small standalone file, written after last.pt

Checkpoints hold tensors and plain data only and are loaded with `weights_only=True`: opening a
run directory someone sent you never runs code from it.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cifarbench import distributed
from cifarbench.distributed import World
from cifarbench.errors import UserError, check_choice
from cifarbench.files import write_stream_atomic
from cifarbench.optimizers import Lookahead
from cifarbench.options import TEST_WEIGHTS
from cifarbench.schedulers import Schedule
from cifarbench.stopping import BestTracker

log = logging.getLogger("cifarbench")

FORMAT = 2  # 1: cifarbench before the training state had one owner (pickled, no best weights inside)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill mid-write leaves the previous file, never half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stream_atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as plain dicts and tensors (weights_only: nothing in it is executed)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise UserError(
                f"checkpoint {path} holds Python objects besides tensors and plain data; cifarbench loads "
                "checkpoints with weights_only=True and refuses to run code from a file (not loaded)"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt or not a cifarbench checkpoint (UnpicklingError)") from None
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or not a cifarbench checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"checkpoint {path} is not a cifarbench checkpoint (no model/config entries)")
    if state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} has format {state.get('format', 1)}, this cifarbench reads format {FORMAT}; "
            "train the run again with this version"
        )
    return state


def weights_to_test(checkpoint: dict[str, Any], which: str) -> dict[str, torch.Tensor]:
    """The state dict of the weights a run evaluates: `best` (the best epoch's, by validation) or
    `last` (the final ones). With EMA on, the weight average is what the run evaluates."""
    if which == "best":
        best = checkpoint.get("best") or {}
        if best.get("weights") is None:
            raise UserError("this checkpoint has no best weights (no validated epoch finished); use --checkpoint last")
        return best["weights"]
    check_choice("test_weights", which, TEST_WEIGHTS)
    if checkpoint.get("ema") is not None:  # AveragedModel's state dict: module.<name> plus n_averaged
        prefix = "module."
        return {k[len(prefix) :]: v for k, v in checkpoint["ema"].items() if k.startswith(prefix)}
    return checkpoint["model"]


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The accelerator's own generator (dropout masks on a GPU come from it, not from the CPU's)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if state is None:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


class Generators:
    """Every random stream of a run. `shuffle` (CPU) orders the batches, the same on every rank;
    `augmentation` (on the training device) draws each rank's augmentation; torch's global
    generators, the CPU's and the accelerator's, draw initialisation, dropout masks and mixup."""

    def __init__(self, seed: int, device: torch.device, world: World) -> None:
        self.seed, self.device, self.world = seed, device, world
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augmentation = torch.Generator(device=device).manual_seed(seed + world.rank)

    def state_dict(self) -> dict[str, Any]:
        """A collective with several processes: every rank's streams go into the one checkpoint."""
        mine = {
            "torch": torch.get_rng_state(),
            "device": device_rng_state(self.device),
            "augment": self.augmentation.get_state(),
        }
        return {
            "device": self.device.type,
            "shuffle": self.shuffle.get_state(),
            "ranks": distributed.gather_objects(mine, self.world),
        }

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> list[str]:
        """Puts every stream back. One that cannot continue where it was (saved on another kind of
        device, or by another number of processes) is re-seeded from (seed, epoch, rank); the
        returned notes say which, so the log tells why numbers differ from an uninterrupted run."""
        self.shuffle.set_state(state["shuffle"])
        ranks, saved_on = state["ranks"], state["device"]
        if len(ranks) != self.world.size:
            self._reseed(epoch, torch_too=True)
            return [
                f"saved by {len(ranks)} processes, resumed with {self.world.size}: re-seeded every process's "
                "dropout and augmentation generators"
            ]
        mine = ranks[self.world.rank]
        torch.set_rng_state(mine["torch"])
        if saved_on != self.device.type:
            self._reseed(epoch, torch_too=False)
            return [
                f"saved on {saved_on}, resumed on {self.device.type}: re-seeded the augmentation generator"
                + (f" and {self.device.type}'s own generator" if self.device.type != "cpu" else "")
            ]
        self.augmentation.set_state(mine["augment"])
        set_device_rng_state(self.device, mine["device"])
        return []

    def _reseed(self, epoch: int, torch_too: bool) -> None:
        seed = (self.seed * 1_000_003 + epoch * 7919 + self.world.rank) % 2**63
        self.augmentation.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type == "mps":
            torch.mps.manual_seed(seed)
        if torch_too:
            torch.default_generator.manual_seed(seed)


def _copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in weights.items()}


@dataclass
class TrainingState:
    """What a run needs to go on. `model` is the bare module (never its DDP or compile wrapper, whose
    state-dict keys differ), so checkpoints look the same however the run was launched."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    tracker: BestTracker
    generators: Generators
    config: dict[str, Any]
    precision: dict[str, Any] | None = None  # precision.Choice.record(): what the run trains in, and why
    data: dict[str, Any] | None = None  # data.DataInfo.record(): its classes, statistics and image size
    ema: AveragedModel | None = None
    lookahead: Lookahead | None = None
    history: list[dict] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None
    best_saved_epoch: int = -1  # the epoch of the best.pt on disk (-1: unknown, write it at the next save)
    saved_epoch: int = 0  # the epoch of the last.pt on disk: what a resume starts after

    @property
    def epoch(self) -> int:
        """Epochs finished."""
        return len(self.history)

    def tested_epoch(self, which: str) -> int:
        """The epoch whose weights `weights_to_test(..., which)` gives."""
        return self.tracker.best_epoch if which == "best" else self.epoch

    @property
    def evaluated(self) -> nn.Module:
        """The weights the run validates and tests: the EMA average when on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, row: dict, monitored: float | None) -> bool:
        """Records a finished epoch; True when `monitored` is a new best (its weights are kept).
        None: the epoch was not validated (validate_every), so nothing is compared."""
        self.history.append(row)
        if monitored is None:
            return False
        improved = self.tracker.update(row["epoch"], monitored)
        if improved:
            self.best_weights = _copy(self.evaluated.state_dict())
        return improved

    def weights(self) -> dict[str, Any]:
        """The weight entries of a checkpoint, which `weights_to_test` reads."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": {"epoch": self.tracker.best_epoch, "weights": self.best_weights},
        }

    def state_dict(self) -> dict[str, Any]:
        """A collective with several processes (every rank's generators are gathered)."""
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "config": self.config,
            "precision": self.precision,
            "data": self.data,
            "history": list(self.history),
            **self.weights(),
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "rng": self.generators.state_dict(),
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> list[str]:
        """Puts a last.pt back; returns notes on what could not continue exactly (re-seeded streams)."""
        self.model.load_state_dict(checkpoint["model"])
        if (self.ema is None) != (checkpoint["ema"] is None) or (self.lookahead is None) != (
            checkpoint["lookahead"] is None
        ):
            raise ValueError("EMA or lookahead settings differ from the run's")
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(checkpoint["lookahead"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # empty when saved disabled (fp32/bf16): a scaler now on (fp16) starts fresh
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.tracker.load_state_dict(checkpoint["tracker"])
        self.history = list(checkpoint["history"])
        best = checkpoint["best"]
        self.best_weights = best["weights"]
        self.best_saved_epoch = -1  # best.pt may be older than last.pt (a kill between the two writes)
        self.saved_epoch = self.epoch
        device = next(self.model.parameters()).device
        if self.best_weights is not None:
            self.best_weights = {k: v.to(device) for k, v in self.best_weights.items()}
        return self.generators.load_state_dict(checkpoint["rng"], self.epoch)

    def save(self, run_dir: Path, world: World) -> None:
        """last.pt first, then best.pt when the best epoch changed: a kill between the two writes
        leaves a last.pt that is complete on its own (it carries the best weights), and the best.pt
        it left behind is rewritten when the run is resumed (`save_best`)."""
        state = self.state_dict()  # every rank takes part in the gather
        if not world.is_main:
            return
        save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
        self.saved_epoch = self.epoch
        self.save_best(run_dir)

    def save_best(self, run_dir: Path) -> None:
        """best.pt, unless the one on disk already holds the best epoch. Called on resume too: a kill
        in the last epoch leaves no later save to rewrite a best.pt older than last.pt."""
        if self.best_weights is None or self.best_saved_epoch == self.tracker.best_epoch:
            return
        best = {
            "format": FORMAT,
            "epoch": self.tracker.best_epoch,
            "config": self.config,
            "data": self.data,
            "model": self.best_weights,
        }
        save_checkpoint(run_dir / "checkpoints" / "best.pt", best)
        self.best_saved_epoch = self.tracker.best_epoch

    @torch.no_grad()
    def sync_ranks(self, world: World) -> None:
        """Gradients keep the parameters identical on every rank, but batch-norm statistics are each
        rank's own: rank 0's are broadcast (model, EMA, lookahead's slow copy) so that every rank
        validates the same weights and all checkpoints describe one model."""
        if not world.enabled:
            return
        tensors = list(self.model.buffers())
        if self.ema is not None:
            tensors += list(self.ema.module.buffers())
        if self.lookahead is not None:
            tensors += list(self.lookahead.slow.values())
        distributed.broadcast_from_main(tensors, world)
