"""Data-parallel training with torch.distributed, started by torchrun (or any launcher that sets
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT).

`batch_size` is the global batch: each of the N processes takes its 1/N slice of every global
batch (the shuffle is the same on every rank, the augmentation stream is each rank's own), and
DistributedDataParallel averages the gradients, so one config is one recipe on 1 or N processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarbench.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = World()


def world_from_env() -> World:
    """What the launcher says, without touching torch.distributed (safe before Hydra starts)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device_name: str) -> tuple[World, torch.device | None]:
    """Joins the process group when launched with several processes: nccl on CUDA, gloo on CPU.
    Returns the world and, on CUDA, this rank's GPU."""
    world = world_from_env()
    if not world.enabled:
        return world, None
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        # Before the process group: NCCL binds each rank's communicator to the current device, and
        # without this every rank would open a context on GPU 0.
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world, torch.device("cuda", world.local_rank) if use_cuda else torch.device("cpu")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(batch_size: int, world: World) -> int:
    if batch_size % world.size:
        raise UserError(
            f"batch_size={batch_size} is the global batch and must divide evenly over {world.size} processes"
        )
    return batch_size // world.size


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device, world: World) -> bool:
    """True on every rank when it is true on one: ranks must stop together, or the next gradient
    all-reduce would wait forever for the one that left."""
    if not world.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: object, world: World) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (each rank's generator state, for resume)."""
    if not world.enabled:
        return [obj]
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(tensors: list[torch.Tensor], world: World) -> None:
    """Rank 0's values into the same tensors on every rank (in place)."""
    if world.enabled:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def main_rank_numbers(numbers: list[float], device: torch.device, world: World) -> list[float]:
    """Rank 0's numbers on every rank: decisions taken from them (schedule, best epoch, early stop)
    are then the same everywhere, even where float summation order differs between ranks."""
    if not world.enabled:
        return numbers
    values = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.broadcast(values, src=0)
    return values.tolist()
