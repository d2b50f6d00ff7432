"""Exact resume: the loop position, every rank's random streams and the shape of the data saved in
``last.state.pt``, and the checks that a resume would continue the run it reads.

A run stopped at any checkpoint and resumed produces bitwise the same weights as an uninterrupted run (on
CPU; cuDNN kernels may be nondeterministic on GPU): the weights, optimizer, schedule and EMA come back from
the state, the random streams are restored where the interrupted run saved them, and anything that would
make the resumed run a different one (config, loader kind, batches per epoch) is refused.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .checkpoint import load_state, save_state
from .config import ConfigError, RunConfig, config_diff, config_to_dict
from .distributed import is_distributed, rank, world_size
from .run_dir import RunDir

__all__ = ["LoopState", "TrainLoader", "data_shape", "epoch_batches", "read_resumable", "resumed_streams",
           "save_training_state", "seed_everything", "start_streams"]

_logger = logging.getLogger(__name__)

_AUG_SEED_OFFSET = 0x5EED  # augmentation draws from its own stream, not a copy of the global one
# How batches are cut over ranks, saved with the state: multi-process memory runs before ShardSampler differ.
_SAMPLER = "ShardSampler"


class TrainLoader(Protocol):
    """What ``fit`` needs from a training loader (``BatchLoader`` and ``StreamLoader`` provide it)."""

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iterate(self, start_batch: int = 0) -> Iterable[tuple[Tensor, Tensor]]: ...


@dataclass
class LoopState:
    """Position and running statistics of the loop; saved in ``last.state.pt``."""

    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0
    loss_sum: float = 0.0  # sum of (batch mean loss * batch size) over the epoch so far, all ranks
    samples: int = 0
    train_seconds: float = 0.0  # training time of the epoch so far (survives a resume)
    lr: float = 0.0  # learning rate of the latest step
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def next_epoch(self) -> LoopState:
        return LoopState(epoch=self.epoch + 1, global_step=self.global_step, lr=self.lr, best_top1=self.best_top1,
                         best_epoch=self.best_epoch, history=self.history)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_streams(seed: int, augment: torch.Generator) -> None:
    """This rank's random streams from ``seed``: the global ones, and augmentation's own."""
    seed_everything(seed + rank())
    augment.manual_seed(seed + rank() + _AUG_SEED_OFFSET)


def _rng_state(augment: torch.Generator) -> dict[str, Any]:
    """All RNG streams as plain tensors/tuples, so ``weights_only`` loading can restore them."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
        "augment": augment.get_state(),
    }


def _set_rng_state(state: dict[str, Any], augment: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    augment.set_state(state["augment"])


def data_shape(loader: TrainLoader) -> dict[str, Any]:
    """What a resume must find unchanged about the training data (saved beside the state)."""
    return {"steps_per_epoch": len(loader), "loader": type(loader).__name__, "sampler": _SAMPLER}


def save_training_state(run: RunDir, parts_state: Callable[[], dict[str, Any]], loop: LoopState,
                        augment: torch.Generator, cfg: RunConfig, shape: dict[str, Any]) -> bool:
    """Write ``last.state.pt`` on rank 0 with every rank's random streams (a collective: every rank calls
    it); ``parts_state()`` gives the weights, optimizer, schedule, scaler and EMA. True on the rank that wrote."""
    rng = _rng_state(augment)
    rngs = [rng]
    if is_distributed():  # every rank's streams, so each resumes its own
        rngs = [None] * world_size()
        dist.all_gather_object(rngs, rng)
    if rank() != 0:
        return False
    save_state({**parts_state(), "rng": rngs, "loop": asdict(loop), "config": config_to_dict(cfg), **shape}, run.state)
    return True


def read_resumable(run: RunDir, cfg: RunConfig, shape: dict[str, Any]) -> dict[str, Any]:
    """``last.state.pt`` of ``run``, after checking that resuming it with ``cfg`` and data of ``shape``
    continues that run exactly (``ConfigError`` / ``ValueError`` saying what differs)."""
    saved = load_state(run.state)
    diffs = config_diff(saved["config"], config_to_dict(cfg))
    if diffs:
        raise ConfigError(f"config differs from the run in {run}, so resuming would not continue it:\n  "
                          + "\n  ".join(diffs))
    if saved.get("loader", shape["loader"]) != shape["loader"]:  # memory and stream order batches differently
        raise ValueError(f"the run in {run} was trained from a {saved['loader']}, this resume reads a "
                         f"{shape['loader']}: set data.loader to the kind it started with")
    old_memory_run = saved.get("loader", "BatchLoader") == "BatchLoader" and saved.get("sampler") != _SAMPLER
    if old_memory_run and len(saved["rng"]) > 1:
        raise ValueError(f"the run in {run} was started on {len(saved['rng'])} processes before in-memory batches "
                         "were cut by ShardSampler (they were cut by torch's DistributedSampler), so resuming would "
                         "not continue it exactly: start it again (single-process runs resume as before)")
    if saved["steps_per_epoch"] != shape["steps_per_epoch"]:
        raise ValueError(f"train_loader has {shape['steps_per_epoch']} batches per epoch, the run in {run} had "
                         f"{saved['steps_per_epoch']}: resume needs the same data and world size")
    return saved


def resumed_streams(saved: dict[str, Any], seed: int, augment: torch.Generator) -> dict[str, Any] | None:
    """This rank's saved random streams, to restore in :func:`epoch_batches`; None after re-seeding them
    (from ``seed`` and the loop's global step) when the run resumes on another number of processes."""
    rngs, global_step = saved["rng"], saved["loop"]["global_step"]
    if len(rngs) == world_size():
        return rngs[rank()]
    _logger.warning("resuming with %d processes instead of %d: random streams are re-seeded", world_size(), len(rngs))
    start_streams(seed + global_step, augment)
    return None


def epoch_batches(loader: TrainLoader, loop: LoopState, pending_rng: dict[str, Any] | None,
                  augment: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of ``loop.epoch`` from ``loop.batch`` on, with resumed random streams restored.

    A loader may draw from the global RNG when it starts an epoch (torch DataLoader does). A mid-epoch
    checkpoint was saved after that draw, an epoch-end one before it: restore around it.
    """
    loader.set_epoch(loop.epoch)
    if pending_rng is not None and loop.batch == 0:
        _set_rng_state(pending_rng, augment)
    batches = iter(loader.iterate(loop.batch))
    if pending_rng is not None and loop.batch > 0:
        _set_rng_state(pending_rng, augment)
    return batches
