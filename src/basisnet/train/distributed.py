"""Minimal multi-process setup (torchrun or SLURM) and rank helpers."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedInfo", "LaunchEnv", "distributed_session", "init_distributed_device", "is_distributed",
    "launch_env", "rank", "unwrap", "world_size",
]

# (launcher, rank, world size, local rank) variables, in order of precedence: torchrun started inside
# a SLURM job sets its own, which must win over the job's.
_LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, as its launcher describes it in environment variables."""

    launcher: str  # "torchrun", "slurm" or "none"
    rank: int
    world_size: int
    local_rank: int


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job and which device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    if name not in environ:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {environ[name]!r}") from None


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read rank, world size and local rank set by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
    or by SLURM's srun (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``); one process otherwise.

    The variables of one launcher are read together, never mixed with the other's.
    """
    env = os.environ if environ is None else environ
    for launcher, rank_var, world_var, local_var in _LAUNCHERS:
        if rank_var in env or world_var in env:
            info = LaunchEnv(launcher, _env_int(env, rank_var), _env_int(env, world_var),
                             _env_int(env, local_var, default=0))
            if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
                raise ValueError(f"inconsistent {launcher} environment: {rank_var}={info.rank}, "
                                 f"{world_var}={info.world_size}, {local_var}={info.local_rank}")
            return info
    return LaunchEnv("none", 0, 1, 0)


def init_distributed_device(device: str | None = None) -> DistributedInfo:
    """Join the process group that :func:`launch_env` describes; a single process needs none.

    Uses NCCL with one GPU per local rank on CUDA, gloo on CPU (``device=None``: CUDA when
    available). The rendezvous address comes from ``MASTER_ADDR``/``MASTER_PORT``: torchrun sets
    them, under plain srun the job script must export them.
    """
    env = launch_env()
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {env.local_rank} ({env.launcher}) needs GPU {env.local_rank}, "
                             f"but only {torch.cuda.device_count()} are visible")
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device or "cpu")
    distributed = env.world_size > 1
    if distributed and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"the {env.launcher} environment describes {env.world_size} processes but "
                             f"{' and '.join(missing)} is not set: export the rank-0 node's address and a free "
                             "port (torchrun sets both)")
        dist.init_process_group("nccl" if on_cuda else "gloo", rank=env.rank, world_size=env.world_size)
    return DistributedInfo(env.rank, env.world_size, env.local_rank, dev, distributed)


@contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistributedInfo]:
    """:func:`init_distributed_device` for a ``with`` block; destroys the process group on exit if the
    block created it (one created by the caller stays), after a barrier when the block ends normally."""
    created = not is_distributed()
    info = init_distributed_device(device)
    try:
        yield info
    except BaseException:
        if created and is_distributed():
            dist.destroy_process_group()
        raise
    if created and is_distributed():
        # Leave together: a rank that tears its group down while another still talks to it can abort
        # (gloo: "terminate called without an active exception", seen at random in two-process test runs).
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (checkpoints, EMA and training hooks use that)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
