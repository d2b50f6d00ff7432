"""Minimal multi-process setup (torchrun or SLURM) and rank helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedInfo", "init_distributed_device", "is_distributed", "rank", "world_size"]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job and which device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def _env_int(*names: str) -> int | None:
    for name in names:
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                raise ValueError(f"environment variable {name} must be an integer, got {os.environ[name]!r}") from None
    return None


def init_distributed_device(device: str | None = None) -> DistributedInfo:
    """Join the process group described by torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) variables; a single process otherwise.

    Uses NCCL with one GPU per local rank on CUDA, gloo on CPU. torchrun also sets
    MASTER_ADDR/MASTER_PORT; under plain SLURM the caller must export them.
    """
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    global_rank = _env_int("RANK", "SLURM_PROCID") or 0
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device or "cpu")
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo", rank=global_rank, world_size=world)
    return DistributedInfo(global_rank, world, local_rank, dev, distributed)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1
